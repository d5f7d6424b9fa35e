"""Reading audio files into 16 kHz waveforms for the dataset builders.

WAV is read with the standard library's `wave` module. FLAC (SLURP's release format) and
other formats go through `soundfile` when it is installed: neither TensorFlow nor the
standard library decodes FLAC. Resampling is a windowed-sinc polyphase filter in numpy.
"""

from __future__ import annotations

import functools
import io
import math
import os
import wave
from typing import BinaryIO

import numpy as np

SAMPLE_RATE = 16_000
# Kaiser-windowed sinc: 16 zero crossings and beta 8.6 give a stopband below -80 dB; the
# cutoff sits at 95% of the lower Nyquist frequency so the transition band does not alias.
_ZERO_CROSSINGS = 16
_KAISER_BETA = 8.6
_ROLLOFF = 0.95

FLAC_HELP = (
    "Decoding {path} needs the `soundfile` package (pip install soundfile), which bundles "
    "libsndfile with FLAC support. Or convert the files to 16-bit WAV next to the originals: "
    'for f in *.flac; do sox "$f" -b 16 "${{f%.flac}}.wav"; done  (or ffmpeg -i in.flac '
    "out.wav); a .wav file with the same stem is used in place of the .flac."
)


def read_wav(source: str | os.PathLike | bytes | BinaryIO) -> tuple[np.ndarray, int]:
    """Reads a PCM WAV file (8/16/24/32-bit, any channel count).

    Returns (waveform float32 [T] in [-1, 1], mixed down to mono, sample_rate).
    Raises ValueError naming the file when it is not a PCM WAV.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    name = source if isinstance(source, str) else "<wav data>"
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with wave.open(source) as f:
            channels, width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
            raw = f.readframes(f.getnframes())
    except (wave.Error, EOFError) as e:
        raise ValueError(f"{name}: not a PCM WAV file ({e})") from e
    samples = _pcm_to_float(raw, width)
    usable = len(samples) - len(samples) % channels
    return samples[:usable].reshape(-1, channels).mean(axis=1), rate


def _pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    """Little-endian PCM bytes of `width` bytes per sample -> float32 [n] in [-1, 1]."""
    if width == 1:  # 8-bit WAV is unsigned, centered on 128.
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 3:  # 24-bit: place the 3 bytes in the top of an int32.
        triples = np.frombuffer(raw[: len(raw) - len(raw) % 3], np.uint8).reshape(-1, 3)
        padded = np.zeros((len(triples), 4), np.uint8)
        padded[:, 1:] = triples
        return padded.view("<i4")[:, 0].astype(np.float32) / 2.0**31
    if width in (2, 4):
        dtype = np.dtype(f"<i{width}")
        return np.frombuffer(raw, dtype).astype(np.float32) / float(2 ** (8 * width - 1))
    raise ValueError(f"unsupported WAV sample width: {width} bytes")


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Reads WAV (stdlib) or FLAC/OGG/... (soundfile). Returns (float32 [T] mono, rate)."""
    path = os.fspath(path)
    if path.lower().endswith(".wav"):
        return read_wav(path)
    try:
        import soundfile
    except ImportError as e:
        raise ImportError(FLAC_HELP.format(path=path)) from e
    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as e:
        raise ValueError(f"{path}: cannot decode audio ({e})") from e
    return samples.mean(axis=1), rate


def soundfile_available() -> bool:
    """Whether `soundfile` (needed for FLAC) can be imported."""
    try:
        import soundfile  # noqa: F401
    except ImportError:
        return False
    return True


def resample(waveform: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling: float [T] at orig_rate -> float32 [ceil(T * new / orig)].

    Output sample m lies at input time t = m * orig / new and is sum_n x[n] h(t - n), with h
    a Kaiser-windowed sinc low-passed below the lower of the two Nyquist frequencies.
    The rational ratio up/down makes h take only `up` distinct phases, so the sum is one
    strided matrix product: frames of the input [n_frames, taps] @ kernel [taps, up].
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    waveform = np.asarray(waveform, np.float32)
    if orig_rate == new_rate or len(waveform) == 0:
        return waveform
    gcd = math.gcd(orig_rate, new_rate)
    up, down = new_rate // gcd, orig_rate // gcd
    kernel, width = _polyphase_kernel(up, down)
    num_out = -(-len(waveform) * up // down)
    num_frames = -(-num_out // up)
    right = num_frames * down + width - len(waveform)
    padded = np.pad(waveform, (width, right))
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[0])[::down]
    return (frames[:num_frames] @ kernel).reshape(-1)[:num_out]


@functools.lru_cache(maxsize=16)
def _polyphase_kernel(up: int, down: int) -> tuple[np.ndarray, int]:
    """Filter taps [2 * width + down, up] for output phases j = 0..up-1, and width."""
    cutoff = min(1.0, up / down) * _ROLLOFF  # In cycles per input sample, times 2.
    half_span = _ZERO_CROSSINGS / cutoff  # Input samples on each side of the output time.
    width = math.ceil(half_span)
    taps = np.arange(2 * width + down, dtype=np.float64)
    phases = np.arange(up, dtype=np.float64) * down / up
    # tau = t - n for output phase j and tap i, with n = frame_start - width + i.
    tau = phases[None, :] + width - taps[:, None]
    inside = np.abs(tau) <= half_span
    window = np.i0(_KAISER_BETA * np.sqrt(np.clip(1.0 - (tau / half_span) ** 2, 0.0, 1.0)))
    kernel = cutoff * np.sinc(cutoff * tau) * window / np.i0(_KAISER_BETA) * inside
    kernel = kernel.astype(np.float32)
    kernel.flags.writeable = False
    return kernel, width


def to_int16(waveform: np.ndarray) -> np.ndarray:
    """float [T] in [-1, 1] -> int16 [T] (clipped), the storage type of the builders.

    The scale 32768 inverts `read_wav`, so 16-bit PCM passes through unchanged.
    """
    return np.clip(np.round(np.asarray(waveform) * 32768.0), -32768, 32767).astype(np.int16)


def waveform_problem(waveform: np.ndarray) -> str | None:
    """Why a waveform is unusable ("empty audio", "non-finite audio samples") or None."""
    if waveform.size == 0:
        return "empty audio"
    if not np.all(np.isfinite(waveform)):
        return "non-finite audio samples"
    return None


def load_16k(path: str | os.PathLike) -> np.ndarray:
    """Reads an audio file and resamples it to 16 kHz: float32 [T]."""
    waveform, rate = read_audio(path)
    return resample(waveform, rate, SAMPLE_RATE)


def load_16k_int16(path: str | os.PathLike) -> np.ndarray:
    """The builders' stored form of an audio file: int16 [T] at 16 kHz.

    Raises ValueError when the file is undecodable, empty or has non-finite samples.
    """
    waveform = load_16k(path)
    problem = waveform_problem(waveform)
    if problem:
        raise ValueError(problem)
    return to_int16(waveform)
