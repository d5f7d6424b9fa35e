"""From raw TFDS records to model inputs, in two stages.

Python stage (per record, inside the reading threads): decode images, pick a caption,
check audio, tokenize the batch. Anything wrong raises `BadRecord`, so the pipeline can
skip or name the record before TensorFlow sees it. TF stage (per example, in tf.data's
parallel map): crop/resize/flip/normalize images and compute log-mels with
`cwcl_jax.audio`, the project's one log-mel implementation.
"""

from __future__ import annotations

import dataclasses
import io
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image

from cwcl_jax import audio


class BadRecord(ValueError):
    """A record that cannot become a training example (the message says why)."""


@dataclasses.dataclass(frozen=True)
class FeatureKeys:
    """Where each modality lives in the dataset's records ("/"-separated paths; None: absent)."""

    image: str | None = None
    text: str | None = None
    speech: str | None = None
    labels: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """Model-side image settings: output side, normalization and train-time augmentation."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: bool = False  # random resized crop (area in [crop_min_scale, 1])
    crop_min_scale: float = 0.5
    flip: bool = False  # random left-right flip (wrong for captions that say "left")


def value_at(record: Mapping[str, Any], path: str) -> Any:
    """The record's value at a "/"-separated feature path."""
    value = record
    for part in path.split("/"):
        value = value[part]
    return value


def decode_image(value: Any) -> np.ndarray:
    """Encoded image bytes (or an already decoded array) -> uint8 `[height, width, 3]`."""
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3:
        image = value
    else:
        try:
            with Image.open(io.BytesIO(bytes(value))) as pil_image:
                image = np.asarray(pil_image.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise BadRecord(f"undecodable image ({type(e).__name__}: {e})") from None
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) == 0:
        raise BadRecord(f"image has shape {image.shape}, expected [height, width, 3]")
    return image


def select_text(value: Any, choice: float | None) -> str:
    """One caption: `value` is a string or a sequence of them (e.g. COCO's five captions).

    `choice` in [0, 1) picks among several (training); None takes the first (evaluation).
    """
    captions = [value] if isinstance(value, bytes | str) else list(np.asarray(value).ravel())
    if not captions:
        raise BadRecord("no caption")
    caption = captions[0 if choice is None else int(choice * len(captions))]
    caption = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
    if not caption.strip():
        raise BadRecord("empty caption")
    return caption.strip()


def to_waveform(value: Any, max_samples: int) -> np.ndarray:
    """PCM (int or float, mono `[samples]` or `[samples, channels]`) -> float32 mono
    `[min(samples, max_samples)]` in [-1, 1]."""
    samples = np.asarray(value)
    if samples.ndim not in (1, 2) or samples.size == 0:
        raise BadRecord(f"empty or malformed audio (shape {samples.shape})")
    if np.issubdtype(samples.dtype, np.integer):
        scale = np.iinfo(samples.dtype).max + 1.0
    elif np.all(np.isfinite(samples)):
        scale = 1.0
    else:
        raise BadRecord("audio has non-finite samples")
    waveform = samples[:max_samples].astype(np.float32) / scale
    return waveform.mean(axis=1) if waveform.ndim == 2 else waveform


class Collator:
    """Turns records into one local batch of fixed-shape numpy arrays (the Python stage)."""

    def __init__(
        self, keys: FeatureKeys, *, tokenizer: Any, max_text_length: int, max_samples: int
    ):
        self.keys = keys
        self._tokenizer = tokenizer
        self.max_text_length = max_text_length
        self._max_samples = max_samples
        # HF fast tokenizers raise "Already borrowed" when two threads call one at once.
        self._tokenizer_lock = threading.Lock()

    def convert(self, record: Mapping[str, Any], choice: float | None) -> dict[str, Any]:
        """One record -> its fields (image array, text, waveform, labels); raises BadRecord."""
        example: dict[str, Any] = {}
        if self.keys.image:
            example["image"] = decode_image(value_at(record, self.keys.image))
        if self.keys.text:
            example["text"] = select_text(value_at(record, self.keys.text), choice)
        if self.keys.speech:
            example["waveform"] = to_waveform(value_at(record, self.keys.speech), self._max_samples)
        for key in self.keys.labels:
            example[f"label/{key}"] = int(value_at(record, key))
        return example

    def placeholder(self) -> dict[str, Any]:
        """Stand-in fields for padding slots (marked invalid) of evaluation batches."""
        example: dict[str, Any] = {f"label/{key}": 0 for key in self.keys.labels}
        if self.keys.image:
            example["image"] = np.zeros((1, 1, 3), np.uint8)
        if self.keys.text:
            example["text"] = ""
        if self.keys.speech:
            example["waveform"] = np.zeros((1,), np.float32)
        return example

    def collate(self, examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Stacks examples: images zero-padded to the batch's largest (with their sizes),
        texts tokenized to `max_text_length`, waveforms zero-padded (with their lengths)."""
        batch = {
            key: np.asarray([e[key] for e in examples], np.int32)
            for key in examples[0]
            if key.startswith("label/")
        }
        if self.keys.image:
            batch["image"], batch["image_hw"] = _pad_stack([e["image"] for e in examples])
        if self.keys.text:
            batch.update(self._tokenize([e["text"] for e in examples]))
        if self.keys.speech:
            batch["waveform"], lengths = _pad_stack([e["waveform"] for e in examples])
            batch["num_samples"] = lengths[:, 0]
        return batch

    def _tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        with self._tokenizer_lock:
            tokens = self._tokenizer(
                texts,
                max_length=self.max_text_length,
                padding="max_length",
                truncation=True,
                return_attention_mask=True,
                return_tensors="np",
            )
        return {
            "input_ids": np.asarray(tokens["input_ids"], np.int32),
            "attention_mask": np.asarray(tokens["attention_mask"], np.int32),
        }


def _pad_stack(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stacks images `[h, w, 3]` or waveforms `[samples]`, zero-padded to the largest.

    Returns the stack `[count, max_h, max_w, 3]` or `[count, max_samples]` and the original
    sizes, int32 `[count, 2]` (h, w) or `[count, 1]` (samples).
    """
    spatial = 2 if arrays[0].ndim == 3 else 1
    shapes = np.array([a.shape[:spatial] for a in arrays], np.int32)
    out = np.zeros((len(arrays), *shapes.max(axis=0), *arrays[0].shape[spatial:]), arrays[0].dtype)
    for i, array in enumerate(arrays):
        out[(i, *(slice(0, s) for s in array.shape[:spatial]))] = array
    return out, shapes


# --- TF stage: one example at a time inside tf.data's parallel map -------------------------


def image_pixels(
    image: tf.Tensor, height_width: tf.Tensor, seed: tf.Tensor, spec: ImageSpec, train: bool
) -> tf.Tensor:
    """uint8 `[H, W, 3]` (valid region `height_width`, rest padding) -> float32 `[S, S, 3]`.

    Training with `spec.augment`: a random crop of area in [crop_min_scale, 1] and aspect in
    [3/4, 4/3]; otherwise a center crop of the largest square. Resized (bilinear,
    antialiased), optionally flipped, scaled to [0, 1] and normalized with mean/std.
    Randomness is stateless, from `seed` (int32 `[2]`), so a resumed run repeats it.
    """
    image = image[: height_width[0], : height_width[1]]
    shape = tf.shape(image)
    if train and spec.augment:
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seed,
            area_range=(spec.crop_min_scale, 1.0),
            aspect_ratio_range=(3 / 4, 4 / 3),
            min_object_covered=0.0,
            use_image_if_no_bounding_boxes=True,
        )
        image = tf.slice(image, begin, crop_size)
    else:
        side = tf.minimum(shape[0], shape[1])
        top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
        image = image[top : top + side, left : left + side]
    pixels = tf.image.resize(image, (spec.size, spec.size), antialias=True) / 255.0
    if train and spec.flip:
        pixels = tf.image.stateless_random_flip_left_right(pixels, seed=seed[::-1])
    mean = tf.constant(spec.mean, tf.float32)
    std = tf.constant(spec.std, tf.float32)
    return tf.ensure_shape((pixels - mean) / std, (spec.size, spec.size, 3))


def speech_features(
    waveform: tf.Tensor, num_samples: tf.Tensor, config: audio.LogMelConfig
) -> dict[str, tf.Tensor]:
    """float32 `[samples]` (first `num_samples` valid) -> `{"mel": f32 [T, n_mels],
    "mel_mask": i32 [T]}`."""
    return audio.log_mel_spectrogram(waveform[:num_samples], config)
