"""Whisper-compatible log-mel front end, in tf.signal so tf.data can run it per example.

This is the project's one log-mel implementation. For a waveform padded (or truncated) to
`config.max_samples`, it reproduces `transformers.WhisperFeatureExtractor` called with
`max_length=config.max_samples`:

1. zero-pad / truncate the waveform to `max_frames * hop_length` samples;
2. reflect-pad `n_fft // 2` samples on both sides (torch.stft `center=True`), frame with a
   periodic Hann window, take |rfft|^2 and drop the last frame (Whisper keeps
   `max_samples // hop_length` frames);
3. project on a Slaney-style mel filterbank (Slaney scale, area normalized, as librosa);
4. `log10(max(mel, 1e-10))`, clamp from below at `max - 8` (the max over the whole padded
   clip), then `(x + 4) / 4`.

With `max_frames=3000` this is Whisper's 30 s input; shorter `max_frames` (e.g. 200 for
2 s keywords) keep the same per-frame values for the real part of the clip (padding only
adds silent frames) and return a frame mask marking which frames hold audio.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

# Whisper's floors: power below 1e-10 is silence; dynamic range is capped at 8 decades.
_MEL_FLOOR = 1e-10
_DYNAMIC_RANGE_DECADES = 8.0


@dataclasses.dataclass(frozen=True)
class LogMelConfig:
    """Log-mel settings; the defaults are Whisper's (80 mels, 25 ms window, 10 ms hop, 30 s)."""

    sample_rate: int = 16_000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    max_frames: int = 3000
    f_min: float = 0.0
    f_max: float = 8000.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "max_frames"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value <= 0:
                raise ValueError(f"LogMelConfig.{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                "LogMelConfig needs 0 <= f_min < f_max <= sample_rate / 2, got "
                f"f_min={self.f_min}, f_max={self.f_max}, sample_rate={self.sample_rate}"
            )
        if self.max_samples <= self.n_fft // 2:
            # Reflect padding of n_fft // 2 needs a longer signal than the pad itself.
            raise ValueError(
                f"LogMelConfig.max_frames={self.max_frames} gives {self.max_samples} samples, "
                f"fewer than n_fft // 2 + 1 = {self.n_fft // 2 + 1}"
            )

    @property
    def max_samples(self) -> int:
        """Waveform length (samples) after padding/truncation."""
        return self.max_frames * self.hop_length

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @classmethod
    def from_preprocessor_config(
        cls, preprocessor: Mapping[str, Any], max_frames: int | None = None
    ) -> LogMelConfig:
        """Builds the config from a Whisper `preprocessor_config.json` dict.

        `max_frames` overrides Whisper's `nb_max_frames` (3000) for shorter training clips.
        """
        if preprocessor.get("feature_extractor_type", "WhisperFeatureExtractor") != (
            "WhisperFeatureExtractor"
        ):
            raise ValueError(
                "preprocessor_config.json: feature_extractor_type is "
                f"{preprocessor['feature_extractor_type']!r}; only WhisperFeatureExtractor "
                "is supported"
            )
        if preprocessor.get("dither", 0.0):
            raise ValueError("preprocessor_config.json: dither != 0 is not supported")
        hop_length = int(preprocessor.get("hop_length", cls.hop_length))
        default_frames = int(preprocessor.get("chunk_length", 30)) * int(
            preprocessor.get("sampling_rate", cls.sample_rate)
        )
        return cls(
            sample_rate=int(preprocessor.get("sampling_rate", cls.sample_rate)),
            n_fft=int(preprocessor.get("n_fft", cls.n_fft)),
            hop_length=hop_length,
            n_mels=int(preprocessor.get("feature_size", cls.n_mels)),
            max_frames=max_frames if max_frames is not None else default_frames // hop_length,
        )


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa `htk=False`)."""
    hz = np.asarray(hz, np.float64)
    linear = 3.0 * hz / 200.0
    log_part = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, log_part, linear)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    linear = 200.0 * mel / 3.0
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


def slaney_mel_filterbank(config: LogMelConfig) -> np.ndarray:
    """Triangular mel filters, Slaney scale and area normalization: float64 `[n_freqs, n_mels]`.

    Same construction as librosa `filters.mel(norm="slaney")` and Whisper's `mel_filters.npz`.
    """
    mel_edges = np.linspace(
        _hz_to_slaney_mel(config.f_min), _hz_to_slaney_mel(config.f_max), config.n_mels + 2
    )
    hz_edges = _slaney_mel_to_hz(mel_edges)
    fft_hz = np.linspace(0.0, config.sample_rate // 2, config.n_freqs)
    lower, center, upper = hz_edges[:-2], hz_edges[1:-1], hz_edges[2:]
    rising = (fft_hz[:, None] - lower) / (center - lower)
    falling = (upper - fft_hz[:, None]) / (upper - center)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return triangles * (2.0 / (upper - lower))


def pad_or_trim(waveform: tf.Tensor, num_samples: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Zero-pads or truncates `[samples]` to `[num_samples]`; also returns the kept length."""
    length = tf.minimum(tf.shape(waveform)[0], num_samples)
    waveform = waveform[:length]
    padded = tf.pad(waveform, [[0, num_samples - length]])
    return tf.ensure_shape(padded, [num_samples]), length


def frame_mask(num_samples: tf.Tensor, config: LogMelConfig) -> tf.Tensor:
    """int32 `[max_frames]`: 1 for frames whose first sample is audio (Whisper's convention).

    Frame t starts at sample t * hop_length, so ceil(num_samples / hop_length) frames are valid,
    the same count as `WhisperFeatureExtractor(return_attention_mask=True)`.
    """
    valid = (num_samples + config.hop_length - 1) // config.hop_length
    return tf.cast(tf.range(config.max_frames) < valid, tf.int32)


def _check_waveform(waveform: tf.Tensor) -> tf.Tensor:
    if waveform.shape.rank is not None and waveform.shape.rank != 1:
        raise ValueError(
            f"log_mel_spectrogram: waveform must be mono with shape [samples], got shape "
            f"{waveform.shape}"
        )
    if not waveform.dtype.is_floating:
        raise ValueError(
            f"log_mel_spectrogram: waveform must be float in [-1, 1], got {waveform.dtype.name} "
            "(for int16 PCM divide by 32768 first)"
        )
    return tf.debugging.assert_greater(
        tf.size(waveform), 0, message="log_mel_spectrogram: waveform is empty (0 samples)"
    )


def log_mel_spectrogram(waveform: tf.Tensor | np.ndarray, config: LogMelConfig) -> dict:
    """Whisper log-mel of one mono clip, padded/truncated to `config.max_frames`.

    Args:
      waveform: float `[samples]` in [-1, 1] at `config.sample_rate`.
      config: front-end settings.

    Returns:
      `{"mel": float32 [max_frames, n_mels], "mel_mask": int32 [max_frames]}`.
    """
    waveform = tf.convert_to_tensor(waveform)
    with tf.control_dependencies([_check_waveform(waveform)]):
        # float64 STFT: float32 rounding shows up in the quiet bins that the 8-decade range keeps.
        padded, length = pad_or_trim(tf.cast(waveform, tf.float64), config.max_samples)
    half = config.n_fft // 2
    centered = tf.pad(padded, [[half, half]], mode="REFLECT")
    stft = tf.signal.stft(
        centered,
        frame_length=config.n_fft,
        frame_step=config.hop_length,
        fft_length=config.n_fft,
        window_fn=lambda n, dtype: tf.signal.hann_window(n, periodic=True, dtype=dtype),
    )[:-1]
    power = tf.math.real(stft) ** 2 + tf.math.imag(stft) ** 2
    mel = tf.matmul(power, tf.constant(slaney_mel_filterbank(config), tf.float64))
    log_mel = tf.math.log(tf.maximum(mel, _MEL_FLOOR)) / np.log(10.0)
    log_mel = tf.maximum(log_mel, tf.reduce_max(log_mel) - _DYNAMIC_RANGE_DECADES)
    normalized = tf.cast((log_mel + 4.0) / 4.0, tf.float32)
    return {
        "mel": tf.ensure_shape(normalized, [config.max_frames, config.n_mels]),
        "mel_mask": frame_mask(length, config),
    }
