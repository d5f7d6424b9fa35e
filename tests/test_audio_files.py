"""Audio file reading and resampling for the builders (cwcl_jax.data.audio_files)."""

import math
import os
import sys
import wave

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cwcl_jax.data import audio_files

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
RATE_PAIRS = [(22050, 16000), (8000, 16000), (48000, 16000), (16000, 22050), (44100, 16000)]


def reference_resample(x: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Direct sum y[m] = sum_n x[n] h(m * orig / new - n), one output sample at a time."""
    cutoff = min(1.0, new / orig) * 0.95
    half_span = 16 / cutoff
    n = np.arange(len(x))
    out = np.zeros(math.ceil(len(x) * new / orig))
    for m in range(len(out)):
        tau = m * orig / new - n
        inside = np.abs(tau) <= half_span
        arg = 8.6 * np.sqrt(np.clip(1 - (tau / half_span) ** 2, 0, 1))
        h = cutoff * np.sinc(cutoff * tau) * np.i0(arg) / np.i0(8.6) * inside
        out[m] = np.dot(x, h)
    return out


@pytest.mark.parametrize(("orig", "new"), RATE_PAIRS)
def test_resample_matches_direct_sum(orig, new):
    x = np.random.default_rng(0).standard_normal(300).astype(np.float32)
    np.testing.assert_allclose(
        audio_files.resample(x, orig, new), reference_resample(x, orig, new), atol=2e-5
    )


@pytest.mark.parametrize(("orig", "new"), RATE_PAIRS)
@pytest.mark.parametrize("frequency", [440.0, 3000.0])
def test_resample_keeps_passband_tones(orig, new, frequency):
    x = np.sin(2 * np.pi * frequency * np.arange(orig // 2) / orig)
    y = audio_files.resample(x, orig, new)
    expected = np.sin(2 * np.pi * frequency * np.arange(len(y)) / new)
    edge = 100  # The filter sees zero padding near the ends.
    np.testing.assert_allclose(y[edge:-edge], expected[edge:-edge], atol=1e-3)


def test_resample_removes_tones_above_the_new_nyquist():
    # 10 kHz at 22.05 kHz would alias to 6 kHz at 16 kHz without the low-pass.
    x = np.sin(2 * np.pi * 10_000 * np.arange(22050) / 22050)
    y = audio_files.resample(x, 22050, 16000)
    assert np.sqrt(np.mean(y[100:-100] ** 2)) < 1e-3


@settings(max_examples=30, deadline=None)
@given(length=st.integers(0, 2000), pair=st.sampled_from(RATE_PAIRS))
def test_resample_output_length_and_dtype(length, pair):
    orig, new = pair
    y = audio_files.resample(np.ones(length), orig, new)
    assert y.dtype == np.float32
    assert y.shape == (math.ceil(length * new / orig),)


def test_resample_same_rate_is_identity():
    x = np.random.default_rng(1).standard_normal(50).astype(np.float32)
    np.testing.assert_array_equal(audio_files.resample(x, 16000, 16000), x)


@pytest.mark.parametrize("rates", [(0, 16000), (16000, -1)])
def test_resample_rejects_bad_rates(rates):
    with pytest.raises(ValueError, match="sample rates must be positive"):
        audio_files.resample(np.zeros(10), *rates)


def _write_pcm(path, ints: np.ndarray, width: int, channels: int = 1, rate: int = 8000):
    """Writes integer samples [frames * channels] as raw little-endian PCM."""
    if width == 1:
        data = (ints + 128).astype(np.uint8).tobytes()
    elif width == 3:
        data = ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        data = ints.astype(f"<i{width}").tobytes()
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(data)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_wav_scales_every_sample_width(tmp_path, width):
    bits = 8 * width
    ints = np.array([0, 1, -1, 2 ** (bits - 1) - 1, -(2 ** (bits - 1)), 2 ** (bits - 3)])
    _write_pcm(tmp_path / "x.wav", ints, width)
    waveform, rate = audio_files.read_wav(tmp_path / "x.wav")
    assert rate == 8000
    np.testing.assert_allclose(waveform, ints / 2.0 ** (bits - 1), rtol=1e-6)


def test_read_wav_mixes_channels_down(tmp_path):
    interleaved = np.array([100, 300, -200, 200, 0, 1000])  # frames (L, R)
    _write_pcm(tmp_path / "stereo.wav", interleaved, 2, channels=2)
    waveform, _ = audio_files.read_wav(str(tmp_path / "stereo.wav"))
    np.testing.assert_allclose(waveform, np.array([200, 0, 500]) / 32768.0)


def test_read_wav_rejects_other_files(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000 definitely not a wave file")
    with pytest.raises(ValueError, match=r"bad\.wav: not a PCM WAV file"):
        audio_files.read_wav(tmp_path / "bad.wav")


def test_int16_round_trip_is_exact():
    ints = np.array([-32768, -1, 0, 1, 12345, 32767], np.int16)
    assert np.array_equal(audio_files.to_int16(ints / 32768.0), ints)
    assert audio_files.to_int16(np.array([2.0, -2.0])).tolist() == [32767, -32768]


@pytest.mark.parametrize(
    ("waveform", "problem"),
    [
        (np.zeros(0), "empty audio"),
        (np.array([0.0, np.nan]), "non-finite audio samples"),
        (np.array([0.0, np.inf]), "non-finite audio samples"),
        (np.array([0.0, 0.5]), None),
    ],
)
def test_waveform_problem(waveform, problem):
    assert audio_files.waveform_problem(waveform) == problem


SLURP_AUDIO = os.path.join(FIXTURES, "slurp_tiny", "audio", "slurp_real")


def test_flac_without_soundfile_says_how_to_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "soundfile", None)  # import soundfile -> ImportError
    with pytest.raises(ImportError, match=r"pip install soundfile.*sox"):
        audio_files.read_audio(os.path.join(SLURP_AUDIO, "audio-00010-headset.flac"))


def test_flac_decodes_like_its_wav_copy():
    pytest.importorskip("soundfile")
    flac, flac_rate = audio_files.read_audio(os.path.join(SLURP_AUDIO, "audio-00010-headset.flac"))
    wav, wav_rate = audio_files.read_audio(os.path.join(SLURP_AUDIO, "audio-00010-headset.wav"))
    assert flac_rate == wav_rate == 16000
    np.testing.assert_array_equal(flac, wav)
