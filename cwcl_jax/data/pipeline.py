"""Input pipelines: a TFDS split -> this process's batches (tf.data) -> global jax.Arrays.

Index-based, for exact and cheap resume. Epoch e is a permutation of the example indices
drawn from (seed, e); global batch k of the epoch is its slice [k*B, (k+1)*B) and process p
reads the part [k*B + p*b, k*B + (p+1)*b) by index (b = B / process count). So a global
batch is the same whatever the number of processes, and the iterator state is just
{seed, epoch, step_in_epoch}: `set_state` jumps there without reading skipped records.
Per-slot randomness (caption choice, augmentation seeds, replacements of bad records) is
drawn from (seed, epoch, step) too. Training drops each epoch's last partial batch (a new
permutation drops different examples); evaluation reads every example once, in order,
padding the last batch and marking real examples in `valid`.

Records go through two stages (see `preprocess`): Python threads read batches of records
by index, decode and tokenize; a tf.data parallel map resizes images and computes log-mels
per example; then batch and prefetch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import threading
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_dict

from cwcl_jax import audio
from cwcl_jax.data import preprocess, sources
from cwcl_jax.data.builder_utils import BAD_RECORD_MODES
from cwcl_jax.sharding import BATCH_AXES

_MAX_REPLACEMENTS = 16  # bad-record replacement draws per slot before giving up
_LOGGED_BAD_RECORDS = 20  # logged one by one; later ones are only counted
_ENDLESS = 2**62  # training steps: the stream of epochs never ends


def default_data_config() -> ml_collections.ConfigDict:
    """The `config.data` fields, with defaults for the embedded `cwcl_shapes` dataset.

    For speech-text (`cwcl_spoken`): features.image=None, features.speech="audio",
    features.text="text". For COCO: name="coco_captions", features.text="captions/text",
    features.labels=().
    """
    config = ml_collections.ConfigDict()
    config.name = "cwcl_shapes"  # TFDS name[/config][:version]
    config.data_dir = config_dict.placeholder(str)  # None: TFDS default (~/tensorflow_datasets)
    config.manual_dir = config_dict.placeholder(str)  # for builders that read local files
    config.prepare = True  # build a missing dataset on first use (downloads if it must)
    config.train_split = "train"
    config.eval_split = "test"
    # Feature paths ("/"-separated) per modality in the dataset's records; None: not used.
    config.features = ml_collections.ConfigDict(
        {
            "image": config_dict.placeholder(str),
            "text": config_dict.placeholder(str),
            "speech": config_dict.placeholder(str),
            "labels": None,  # None: every top-level ClassLabel feature; () for none
        }
    )
    config.features.image = "image"
    config.features.text = "caption"
    config.image_size = 64
    config.image_mean = (0.5, 0.5, 0.5)  # of pixels in [0, 1]; set from the image tower
    config.image_std = (0.5, 0.5, 0.5)
    config.augment = False  # random resized crop while training
    config.crop_min_scale = 0.5  # smallest crop area (fraction of the image)
    config.flip = False  # random left-right flip while training
    config.max_text_length = 32
    config.tokenizer = config_dict.placeholder(str)  # HF tokenizer dir; None: the text tower's
    config.audio_max_seconds = 4.0
    config.n_mels = 80
    config.sample_rate = 16_000
    config.shuffle = True
    config.bad_records = "skip"  # "skip" (replace, count, log) | "raise"
    config.prefetch = 2  # batches prepared ahead
    config.read_threads = 4  # batches read (decoded, tokenized) in parallel
    return config


@functools.lru_cache(maxsize=2)  # reading threads may straddle two epochs
def _epoch_order(seed: int, epoch: int, num_examples: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(num_examples)
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """Which example indices this process reads at each step, and the per-slot randomness."""

    num_examples: int
    global_batch_size: int
    process_index: int
    process_count: int
    seed: int
    shuffle: bool
    train: bool

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.process_count

    @property
    def steps_per_epoch(self) -> int:
        if self.train:  # the last partial batch is dropped
            return self.num_examples // self.global_batch_size
        return math.ceil(self.num_examples / self.global_batch_size)

    def local_indices(self, step: int) -> tuple[int, int, np.ndarray]:
        """(epoch, step_in_epoch, indices int64 `[local_batch]`, -1 for eval padding)."""
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        start = step_in_epoch * self.global_batch_size + self.process_index * self.local_batch_size
        positions = np.arange(start, start + self.local_batch_size)
        if self.train:
            order = _epoch_order(self.seed, epoch, self.num_examples, self.shuffle)
            return epoch, step_in_epoch, order[positions]
        return epoch, step_in_epoch, np.where(positions < self.num_examples, positions, -1)

    def slot_randomness(self, epoch: int, step_in_epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Caption choices float `[local_batch]` in [0, 1) and augmentation seeds int32
        `[local_batch, 2]`, drawn for the whole global batch so they do not depend on the
        number of processes."""
        rng = np.random.default_rng([self.seed, epoch, step_in_epoch, 1])
        choices = rng.random(self.global_batch_size)
        seeds = rng.integers(0, 2**31 - 1, (self.global_batch_size, 2), dtype=np.int32)
        mine = slice(self.process_index * self.local_batch_size, None)
        return choices[mine][: self.local_batch_size], seeds[mine][: self.local_batch_size]

    def replacement(self, epoch: int, step_in_epoch: int, slot: int, attempt: int) -> int:
        """Index of the example that stands in for a bad record in local `slot`."""
        global_slot = self.process_index * self.local_batch_size + slot
        key = [self.seed, epoch, step_in_epoch, global_slot, attempt, 2]
        return int(np.random.default_rng(key).integers(self.num_examples))


class LocalBatches:
    """Iterator over this process's batches: numpy dicts nested by modality.

    `{"image": {"pixels": f32 [b, S, S, 3]}, "text": {"input_ids", "attention_mask": i32
    [b, L]}, "speech": {"mel": f32 [b, T, n_mels], "mel_mask": i32 [b, T]}, "labels":
    {name: i32 [b]}, "index": i32 [b]}` (only the configured modalities), plus `"valid":
    bool [b]` when evaluating. With a `frozen_cache` (a `cwcl_jax.frozen_cache.FrozenCache`)
    its modality is not read; `"frozen_raw": f32 [b, dim]` holds the cached embeddings,
    and an example without one counts as a bad record, as its frozen side was at build
    time. `bad_records` counts the records skipped so far.
    """

    def __init__(
        self,
        split: sources.Split,
        plan: BatchPlan,
        collator: preprocess.Collator,
        *,
        image_spec: preprocess.ImageSpec | None,
        log_mel: audio.LogMelConfig | None,
        bad_records: str,
        prefetch: int,
        read_threads: int,
        frozen_cache: Any = None,
    ):
        self.split, self.plan, self.collator = split, plan, collator
        self._frozen_cache = frozen_cache
        self._image_spec, self._log_mel = image_spec, log_mel
        self._raise_on_bad = bad_records == "raise"
        self._prefetch, self._read_threads = prefetch, read_threads
        self._next_step = 0
        self._iterator = None
        self._failures: dict[int, BaseException] = {}  # step -> error of its reading thread
        self._lock = threading.Lock()
        self.bad_records = 0

    # --- iteration and state ---------------------------------------------------------

    def __iter__(self) -> LocalBatches:
        return self

    def __len__(self) -> int:
        """Batches left to iterate in an evaluation pass (training never ends)."""
        if self.plan.train:
            raise TypeError("a training pipeline is endless; see plan.steps_per_epoch")
        return self.plan.steps_per_epoch - self._next_step

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = self._dataset(self._next_step).as_numpy_iterator()
        try:
            batch = next(self._iterator)
        except tf.errors.OpError:
            if self._next_step in self._failures:  # the reading thread's error, not TF's wrapper
                raise self._failures[self._next_step] from None
            raise
        self._next_step += 1
        return batch

    def get_state(self) -> dict[str, int]:
        """JSON-able position of the next batch: {seed, epoch, step_in_epoch, global_batch_size}."""
        epoch, step_in_epoch = divmod(self._next_step, self.plan.steps_per_epoch)
        return {
            "seed": self.plan.seed,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_batch_size": self.plan.global_batch_size,
        }

    def set_state(self, state: dict[str, int]) -> None:
        """Continues from a `get_state()` result (with its seed), reading nothing skipped."""
        missing = {"seed", "epoch", "step_in_epoch", "global_batch_size"} - set(state)
        if missing:
            raise ValueError(f"data iterator state lacks {sorted(missing)}: {state}")
        if int(state["global_batch_size"]) != self.plan.global_batch_size:
            raise ValueError(
                f"data iterator state was saved with global_batch_size="
                f"{state['global_batch_size']}, this pipeline has "
                f"{self.plan.global_batch_size}; drop the data state to restart the epoch order"
            )
        step_in_epoch = int(state["step_in_epoch"])
        if not 0 <= step_in_epoch < self.plan.steps_per_epoch or int(state["epoch"]) < 0:
            raise ValueError(
                f"data iterator state {state} is outside the {self.plan.steps_per_epoch} "
                f"steps per epoch of {self.split.name}"
            )
        self.plan = dataclasses.replace(self.plan, seed=int(state["seed"]))
        self._next_step = int(state["epoch"]) * self.plan.steps_per_epoch + step_in_epoch
        self._iterator = None

    # --- Python stage: read, check and collate one local batch -----------------------

    def _read_step(self, step: np.int64) -> tuple[np.ndarray, ...]:
        try:
            batch = self._read_batch(int(step))
            return tuple(batch[name] for name in self._signature)
        except BaseException as e:  # re-raised as is by __next__, not as a TF error
            self._failures[int(step)] = e
            raise

    def _read_batch(self, step: int) -> dict[str, np.ndarray]:
        epoch, step_in_epoch, indices = self.plan.local_indices(step)
        choices, seeds = self.plan.slot_randomness(epoch, step_in_epoch)
        records = self._read_records(indices)
        examples, final_indices, valid = [], [], []
        for slot, (index, record) in enumerate(zip(indices, records, strict=True)):
            choice = choices[slot] if self.plan.train else None
            example, index = self._example(epoch, step_in_epoch, slot, int(index), record, choice)
            examples.append(example if example is not None else self.collator.placeholder())
            final_indices.append(index)
            valid.append(example is not None)
        batch = self.collator.collate(examples)
        if self._frozen_cache is not None:
            padding = np.zeros(self._frozen_cache.dim, np.float32)
            batch["frozen_raw"] = np.stack([e.get("frozen_raw", padding) for e in examples])
        batch["index"] = np.asarray(final_indices, np.int32)
        batch["seed"] = seeds
        batch["valid"] = np.asarray(valid)
        return batch

    def _read_records(self, indices: np.ndarray) -> list[Any]:
        """Records at `indices` (None for -1); a record that fails to load becomes BadRecord."""
        wanted = [int(i) for i in indices if i >= 0]
        try:
            loaded = iter(self.split.read(wanted))
            return [next(loaded) if i >= 0 else None for i in indices]
        except Exception:  # find which one: read them one by one
            return [self._read_one(int(i)) if i >= 0 else None for i in indices]

    def _read_one(self, index: int) -> Any:
        try:
            return self.split.read([index])[0]
        except Exception as e:
            return preprocess.BadRecord(f"unreadable record ({type(e).__name__}: {e})")

    def _example(self, epoch, step_in_epoch, slot, index, record, choice):
        """(fields, index) of the slot's example; bad records are replaced while training
        and left empty (None, invalid) while evaluating."""
        if index < 0:
            return None, -1
        for attempt in range(_MAX_REPLACEMENTS):
            try:
                if isinstance(record, preprocess.BadRecord):
                    raise record
                example = self.collator.convert(record, choice)
                if self._frozen_cache is not None:
                    example["frozen_raw"] = self._frozen_cache.lookup(index)
                return example, index
            except preprocess.BadRecord as e:
                self._count_bad(index, e)
            if not self.plan.train:
                return None, index
            index = self.plan.replacement(epoch, step_in_epoch, slot, attempt)
            record = self._read_one(index)
        raise ValueError(
            f"{self.split.name}: {_MAX_REPLACEMENTS} random replacements for a bad record were "
            "all bad too; check the dataset and data.features"
        )

    def _count_bad(self, index: int, error: preprocess.BadRecord) -> None:
        where = f"{self.split.name} record {index}"
        if self._raise_on_bad:
            raise preprocess.BadRecord(f"{where}: {error} (data.bad_records='skip' skips it)")
        with self._lock:
            self.bad_records += 1
            count = self.bad_records
        if count <= _LOGGED_BAD_RECORDS:
            logging.warning("Skipped bad %s: %s (%d skipped so far)", where, error, count)
        if count == _LOGGED_BAD_RECORDS:
            logging.warning("Further bad records are counted (bad_records), not logged.")

    # --- TF stage ----------------------------------------------------------------------

    @functools.cached_property
    def _signature(self) -> dict[str, tuple[tf.DType, tuple[int | None, ...]]]:
        """dtype and per-example shape of each array the Python stage returns."""
        keys = self.collator.keys
        signature = {f"label/{k}": (tf.int32, ()) for k in keys.labels}
        if keys.image:
            signature.update(image=(tf.uint8, (None, None, 3)), image_hw=(tf.int32, (2,)))
        if keys.text:
            length = self.collator.max_text_length
            signature.update(input_ids=(tf.int32, (length,)), attention_mask=(tf.int32, (length,)))
        if keys.speech:
            signature.update(waveform=(tf.float32, (None,)), num_samples=(tf.int32, ()))
        if self._frozen_cache is not None:
            signature["frozen_raw"] = (tf.float32, (self._frozen_cache.dim,))
        signature.update(index=(tf.int32, ()), seed=(tf.int32, (2,)), valid=(tf.bool, ()))
        return signature

    def _read_fn(self, step: tf.Tensor) -> dict[str, tf.Tensor]:
        dtypes = [dtype for dtype, _ in self._signature.values()]
        arrays = tf.numpy_function(self._read_step, [step], dtypes, stateful=True)
        batch = self.plan.local_batch_size
        return {
            name: tf.ensure_shape(array, (batch, *shape))
            for (name, (_, shape)), array in zip(self._signature.items(), arrays, strict=True)
        }

    def _model_inputs(self, example: dict[str, tf.Tensor]) -> dict[str, Any]:
        keys, train = self.collator.keys, self.plan.train
        out: dict[str, Any] = {"index": example["index"]}
        if not train:
            out["valid"] = example["valid"]
        if keys.image:
            pixels = preprocess.image_pixels(
                example["image"], example["image_hw"], example["seed"], self._image_spec, train
            )
            out["image"] = {"pixels": pixels}
        if keys.text:
            out["text"] = {k: example[k] for k in ("input_ids", "attention_mask")}
        if keys.speech:
            out["speech"] = preprocess.speech_features(
                example["waveform"], example["num_samples"], self._log_mel
            )
        if keys.labels:
            out["labels"] = {k: example[f"label/{k}"] for k in keys.labels}
        if self._frozen_cache is not None:
            out["frozen_raw"] = example["frozen_raw"]
        return out

    def _dataset(self, start_step: int) -> tf.data.Dataset:
        stop = _ENDLESS if self.plan.train else self.plan.steps_per_epoch
        dataset = tf.data.Dataset.range(start_step, stop)
        dataset = dataset.map(self._read_fn, num_parallel_calls=self._read_threads)
        dataset = dataset.unbatch()
        dataset = dataset.map(self._model_inputs, num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.batch(self.plan.local_batch_size, drop_remainder=True)
        options = tf.data.Options()
        options.deterministic = True
        return dataset.prefetch(self._prefetch).with_options(options)


class GlobalBatches:
    """Iterator over global batches: the local batches assembled into jax.Arrays whose
    leading dimension is sharded over the mesh's batch axes."""

    def __init__(self, local: LocalBatches, sharding: NamedSharding):
        self.local, self.sharding = local, sharding

    def __iter__(self) -> GlobalBatches:
        return self

    def __len__(self) -> int:
        return len(self.local)

    def __next__(self) -> dict[str, Any]:
        batch = next(self.local)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.sharding, x), batch
        )

    @property
    def bad_records(self) -> int:
        return self.local.bad_records

    def get_state(self) -> dict[str, int]:
        return self.local.get_state()

    def set_state(self, state: dict[str, int]) -> None:
        self.local.set_state(state)


def make_pipeline(
    data_config: ml_collections.ConfigDict,
    *,
    split: str,
    global_batch_size: int,
    mesh: Mesh,
    seed: int,
    tokenizer: Any = None,
    train: bool = True,
    batch_axes: Sequence[str] = BATCH_AXES,
    frozen_cache: Any = None,
) -> GlobalBatches:
    """Global batches of `split` for the mesh; see `LocalBatches` for their structure.

    Args:
      data_config: fields of `default_data_config()`.
      split: TFDS split (slices allowed).
      global_batch_size: examples per step over all processes.
      mesh: the batch dimension is sharded over those of `batch_axes` the mesh has.
      seed: the epoch permutations, caption choices and augmentation derive from it.
      tokenizer: HF tokenizer for the text modality (or a local tokenizer dir); None uses
        `data_config.tokenizer`.
      train: endless shuffled stream; False: one ordered pass with a padded last batch.
      frozen_cache: a `cwcl_jax.frozen_cache.FrozenCache`: join its embeddings as
        `frozen_raw` and skip reading its modality.
    """
    sharding = batch_sharding(mesh, batch_axes, global_batch_size)
    local = make_local_pipeline(
        data_config,
        split=split,
        global_batch_size=global_batch_size,
        seed=seed,
        tokenizer=tokenizer,
        train=train,
        frozen_cache=frozen_cache,
    )
    return GlobalBatches(local, sharding)


def batch_sharding(mesh: Mesh, batch_axes: Sequence[str], global_batch_size: int) -> NamedSharding:
    """Sharding of the leading dimension over the mesh's batch axes; checks divisibility."""
    axes = tuple(a for a in batch_axes if a in mesh.axis_names)
    if not axes:
        raise ValueError(f"mesh axes {mesh.axis_names} include none of the batch axes {batch_axes}")
    devices = math.prod(mesh.shape[a] for a in axes)
    if global_batch_size % devices:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by the {devices} devices "
            f"of the mesh's batch axes {axes}"
        )
    return NamedSharding(mesh, P(axes))


def make_local_pipeline(
    data_config: ml_collections.ConfigDict,
    *,
    split: str,
    global_batch_size: int,
    seed: int,
    tokenizer: Any = None,
    train: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    frozen_cache: Any = None,
) -> LocalBatches:
    """This process's share of every global batch, as numpy (see `make_pipeline`).

    `process_index` / `process_count` default to jax's; tests pass others to simulate hosts.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    _check_config(data_config, global_batch_size, process_count)
    features = data_config.features
    keys = preprocess.FeatureKeys(image=features.image, text=features.text, speech=features.speech)
    if frozen_cache is not None:  # its embeddings stand in for the frozen modality
        keys = dataclasses.replace(keys, **{frozen_cache.modality: None})
    if not (keys.image or keys.text or keys.speech):
        raise ValueError("data.features: image, text and speech are all None; name at least one")
    tokenizer = _tokenizer(tokenizer, data_config) if keys.text else None
    data = sources.open_split(
        data_config.name,
        split,
        data_dir=data_config.data_dir,
        encoded=(keys.image,) if keys.image else (),
        prepare=data_config.prepare,
        manual_dir=data_config.manual_dir,
    )
    if frozen_cache is not None and frozen_cache.num_examples != len(data):
        raise ValueError(
            f"frozen cache {frozen_cache.directory} holds {frozen_cache.num_examples} examples, "
            f"{data.name} has {len(data)}"
        )
    keys = dataclasses.replace(keys, labels=_label_keys(data, features.labels))
    for path in (keys.text, keys.speech):
        if path:
            sources.feature_at(data.features, path, data.name)
    log_mel = _log_mel_config(data, keys.speech, data_config) if keys.speech else None
    plan = BatchPlan(
        num_examples=len(data),
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
        seed=seed,
        shuffle=bool(data_config.shuffle),
        train=train,
    )
    if plan.steps_per_epoch == 0:
        raise ValueError(
            f"{data.name} has {len(data)} examples, fewer than global_batch_size="
            f"{global_batch_size}"
        )
    collator = preprocess.Collator(
        keys,
        tokenizer=tokenizer,
        max_text_length=data_config.max_text_length,
        max_samples=log_mel.max_samples if log_mel else 0,
    )
    return LocalBatches(
        data,
        plan,
        collator,
        image_spec=_image_spec(data_config) if keys.image else None,
        log_mel=log_mel,
        bad_records=data_config.bad_records,
        prefetch=data_config.prefetch,
        read_threads=data_config.read_threads,
        frozen_cache=frozen_cache,
    )


def _check_config(config: ml_collections.ConfigDict, global_batch_size: int, processes: int):
    if config.bad_records not in BAD_RECORD_MODES:
        raise ValueError(
            f"data.bad_records must be one of {BAD_RECORD_MODES}, got {config.bad_records!r}"
        )
    if not isinstance(global_batch_size, int | np.integer) or global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be a positive integer, got {global_batch_size!r}")
    if global_batch_size % processes:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by the process count "
            f"{processes}"
        )
    for field in ("image_size", "max_text_length", "prefetch", "read_threads", "n_mels"):
        if int(config[field]) <= 0:
            raise ValueError(f"data.{field} must be positive, got {config[field]}")
    if not 0.0 < config.crop_min_scale <= 1.0:
        raise ValueError(f"data.crop_min_scale must be in (0, 1], got {config.crop_min_scale}")
    for field in ("image_mean", "image_std"):
        if len(config[field]) != 3:
            raise ValueError(f"data.{field} needs 3 values (RGB), got {config[field]}")
    if min(config.image_std) <= 0:
        raise ValueError(f"data.image_std must be positive, got {config.image_std}")


def _tokenizer(tokenizer: Any, config: ml_collections.ConfigDict) -> Any:
    tokenizer = tokenizer if tokenizer is not None else config.tokenizer
    if tokenizer is None:
        raise ValueError(
            "the text modality needs a tokenizer: pass tokenizer= (the text tower's "
            "processor) or set data.tokenizer to a local tokenizer directory"
        )
    if isinstance(tokenizer, str):
        import transformers  # deferred: heavy, and only text pipelines need it

        if not os.path.isdir(tokenizer):  # a hub name would download: local dirs only
            raise ValueError(f"data.tokenizer={tokenizer!r}: cannot load it: not a directory")
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"data.tokenizer={tokenizer!r}: cannot load it: {e}") from None
    return tokenizer


def _label_keys(data: sources.Split, label_keys: Sequence[str] | None) -> tuple[str, ...]:
    """The configured label features, or every top-level ClassLabel when None."""
    if label_keys is None:
        return tuple(k for k, f in data.features.items() if isinstance(f, tfds.features.ClassLabel))
    for key in label_keys:
        sources.feature_at(data.features, key, data.name)
    return tuple(label_keys)


def _log_mel_config(
    data: sources.Split, speech_key: str, config: ml_collections.ConfigDict
) -> audio.LogMelConfig:
    feature = sources.feature_at(data.features, speech_key, data.name)
    rate = getattr(feature, "sample_rate", None)
    if rate is not None and rate != config.sample_rate:
        raise ValueError(
            f"{data.name} feature {speech_key!r} is sampled at {rate} Hz, but "
            f"data.sample_rate={config.sample_rate}; resample the dataset or change the field"
        )
    hop = audio.LogMelConfig.hop_length
    frames = round(config.audio_max_seconds * config.sample_rate / hop)
    if frames <= 0:
        raise ValueError(f"data.audio_max_seconds must be positive, got {config.audio_max_seconds}")
    return audio.LogMelConfig(
        sample_rate=config.sample_rate, n_mels=config.n_mels, max_frames=frames
    )


def _image_spec(config: ml_collections.ConfigDict) -> preprocess.ImageSpec:
    return preprocess.ImageSpec(
        size=config.image_size,
        mean=tuple(config.image_mean),
        std=tuple(config.image_std),
        augment=config.augment,
        crop_min_scale=config.crop_min_scale,
        flip=config.flip,
    )
