"""Speech synthesis with Debian's espeak-ng, as 16 kHz waveforms with varied voices."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import numpy as np

from cwcl_jax.data import audio_files

ESPEAK_BINARY = "espeak-ng"
INSTALL_HELP = (
    "espeak-ng is not installed (no `{binary}` on PATH); the cwcl_spoken dataset "
    "synthesizes its speech with it. Install it with `sudo apt-get install espeak-ng` "
    "(Debian/Ubuntu; scripts/install.sh does this) or `brew install espeak-ng` (macOS)."
)
# espeak-ng's own English voices (no mbrola data needed) and its voice variants.
ACCENTS = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
VARIANTS = (
    *(f"m{i}" for i in range(1, 8)),
    *(f"f{i}" for i in range(1, 6)),
    "klatt",
    "klatt2",
    "klatt4",
    "croak",
)


@dataclasses.dataclass(frozen=True)
class Voice:
    """How espeak-ng speaks one utterance, and how the result is placed in the clip."""

    accent: str = "en-us"
    variant: str = "m1"
    words_per_minute: int = 160
    pitch: int = 50  # espeak-ng's 0..99 scale.
    peak: float = 0.7  # Peak amplitude after normalization, in (0, 1].
    lead_seconds: float = 0.05  # Silence added before and after the speech.
    tail_seconds: float = 0.05
    snr_db: float = 40.0  # White noise under the whole clip; keeps log-mels finite.
    noise_seed: int = 0


def random_voice(rng: np.random.Generator) -> Voice:
    """Samples accent, variant, speed, pitch, level, padding and noise from `rng`."""
    return Voice(
        accent=str(rng.choice(ACCENTS)),
        variant=str(rng.choice(VARIANTS)),
        words_per_minute=int(rng.integers(120, 211)),
        pitch=int(rng.integers(20, 81)),
        peak=float(rng.uniform(0.25, 0.95)),
        lead_seconds=float(rng.uniform(0.0, 0.2)),
        tail_seconds=float(rng.uniform(0.0, 0.2)),
        snr_db=float(rng.uniform(20.0, 45.0)),
        noise_seed=int(rng.integers(2**31)),
    )


def require_espeak(binary: str = ESPEAK_BINARY) -> str:
    """Returns the path of espeak-ng, or raises RuntimeError saying how to install it."""
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(INSTALL_HELP.format(binary=binary))
    return path


def synthesize(text: str, voice: Voice, *, binary: str = ESPEAK_BINARY) -> np.ndarray:
    """Speaks `text` with `voice`: float32 waveform [T] at 16 kHz, peak `voice.peak`."""
    speech = _trim_silence(_run_espeak(text, voice, binary))
    speech = speech * (voice.peak / max(float(np.abs(speech).max()), 1e-6))
    rate = audio_files.SAMPLE_RATE
    clip = np.concatenate(
        [
            np.zeros(int(voice.lead_seconds * rate), np.float32),
            speech,
            np.zeros(int(voice.tail_seconds * rate), np.float32),
        ]
    )
    speech_rms = float(np.sqrt(np.mean(speech**2)))
    noise_rms = speech_rms * 10.0 ** (-voice.snr_db / 20.0)
    noise = np.random.default_rng(voice.noise_seed).standard_normal(len(clip))
    return np.clip(clip + noise_rms * noise, -1.0, 1.0).astype(np.float32)


def _run_espeak(text: str, voice: Voice, binary: str) -> np.ndarray:
    """espeak-ng's output for `text` resampled to 16 kHz: float32 [T]."""
    command = [
        require_espeak(binary),
        "--stdout",
        "-v",
        f"{voice.accent}+{voice.variant}",
        "-s",
        str(voice.words_per_minute),
        "-p",
        str(voice.pitch),
    ]
    # The text goes through stdin so that one starting with "-" is never read as a flag.
    result = subprocess.run(command, input=text.encode(), capture_output=True, check=False)
    if result.returncode != 0 or len(result.stdout) <= 44:
        raise RuntimeError(
            f"espeak-ng produced no audio for {text!r} with voice {voice}: "
            f"exit code {result.returncode}, stderr {result.stderr.decode(errors='replace')!r}"
        )
    # In --stdout mode the WAV header carries a placeholder length; wave reads what is there.
    waveform, rate = audio_files.read_wav(result.stdout)
    return audio_files.resample(waveform, rate, audio_files.SAMPLE_RATE)


def _trim_silence(waveform: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    """Drops the leading and trailing samples below `threshold` (espeak-ng pads ~0.3 s)."""
    loud = np.flatnonzero(np.abs(waveform) > threshold)
    if len(loud) == 0:
        raise RuntimeError("espeak-ng produced a silent clip")
    return waveform[loud[0] : loud[-1] + 1]
