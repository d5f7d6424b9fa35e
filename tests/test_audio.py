"""Log-mel front end against transformers' WhisperFeatureExtractor (numpy path, no torch)."""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank

from cwcl_jax import audio

SR = 16_000
# Measured max |ours - HF| on the normalized log-mel is ~1.2e-7 (float32 output rounding).
TOLERANCE = 1e-6
SHORT = audio.LogMelConfig(max_frames=120)  # 1.2 s


def _signal(kind: str, num_samples: int) -> np.ndarray:
    t = np.arange(num_samples) / SR
    rng = np.random.default_rng(num_samples)
    if kind == "sine":
        x = 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.05 * np.sin(2 * np.pi * 3100.0 * t)
    elif kind == "noise":
        x = 0.1 * rng.standard_normal(num_samples)
    elif kind == "chirp":  # 100 Hz -> 6 kHz sweep: exercises every mel band
        x = 0.3 * np.sin(2 * np.pi * (100.0 * t + 2950.0 * t**2 / t[-1]))
    elif kind == "quiet_burst":  # mostly near-silence: the max - 8 clamp is active
        x = 1e-5 * rng.standard_normal(num_samples)
        burst = slice(num_samples // 3, num_samples // 2)
        x[burst] += 0.5 * np.sin(2 * np.pi * 1000.0 * t[burst])
    else:
        raise AssertionError(kind)
    return x.astype(np.float32)


def _whisper(x: np.ndarray, config: audio.LogMelConfig) -> tuple[np.ndarray, np.ndarray]:
    extractor = WhisperFeatureExtractor(feature_size=config.n_mels)
    out = extractor(
        x,
        sampling_rate=SR,
        max_length=config.max_samples,
        return_attention_mask=True,
        return_tensors="np",
    )
    return out["input_features"][0].T, out["attention_mask"][0]


def test_filterbank_matches_transformers_and_librosa_properties():
    ours = audio.slaney_mel_filterbank(audio.LogMelConfig())
    ref = mel_filter_bank(201, 80, 0.0, 8000.0, SR, norm="slaney", mel_scale="slaney")
    assert ours.shape == (201, 80)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)
    # Slaney scale anchors: 1 kHz is mel 15; area normalization gives each triangle unit area
    # over its Hz support (2 / width * width / 2), so Riemann sums over 40 Hz bins are ~1
    # (coarsely for the narrow low filters, tightly for the wide high ones).
    np.testing.assert_allclose(audio._hz_to_slaney_mel(np.array([0.0, 1000.0])), [0.0, 15.0])
    areas = ours.sum(axis=0) * (SR / 2 / 200)
    np.testing.assert_allclose(areas, 1.0, atol=0.1)
    np.testing.assert_allclose(areas[45:], 1.0, atol=0.02)


@pytest.mark.parametrize("kind", ["sine", "noise", "chirp", "quiet_burst"])
@pytest.mark.parametrize("num_samples", [3_001, 19_200, 25_000])  # shorter, equal, longer
def test_log_mel_matches_whisper_feature_extractor(kind, num_samples):
    x = _signal(kind, num_samples)
    ref_mel, ref_mask = _whisper(x, SHORT)
    out = audio.log_mel_spectrogram(x, SHORT)
    assert out["mel"].shape == (120, 80) and out["mel"].dtype == tf.float32
    np.testing.assert_allclose(out["mel"].numpy(), ref_mel, atol=TOLERANCE, rtol=0)
    np.testing.assert_array_equal(out["mel_mask"].numpy(), ref_mask)


def test_whisper_default_30s_input():
    x = _signal("chirp", 5 * SR)
    ref_mel, _ = _whisper(x, audio.LogMelConfig())
    out = audio.log_mel_spectrogram(x, audio.LogMelConfig())
    assert out["mel"].shape == (3000, 80)
    np.testing.assert_allclose(out["mel"].numpy(), ref_mel, atol=TOLERANCE, rtol=0)
    assert int(out["mel_mask"].numpy().sum()) == 500


def test_short_max_frames_gives_whisper_30s_frames():
    """Padding adds only silence, which moves neither the frames with audio nor the max."""
    x = _signal("chirp", 15_000)
    short = audio.log_mel_spectrogram(x, SHORT)["mel"].numpy()
    whisper = audio.log_mel_spectrogram(x, audio.LogMelConfig())["mel"].numpy()
    np.testing.assert_array_equal(short, whisper[: SHORT.max_frames])


def test_normalization_range():
    mel = audio.log_mel_spectrogram(_signal("noise", 8_000), SHORT)["mel"].numpy()
    # (log10 + 4) / 4 with an 8-decade floor: the spread is at most 2.
    assert mel.max() - mel.min() <= 2.0 + 1e-6
    np.testing.assert_allclose(mel.min(), mel.max() - 2.0, atol=1e-6)


def test_truncation_equals_log_mel_of_the_prefix():
    x = _signal("noise", 30_000)
    long = audio.log_mel_spectrogram(x, SHORT)
    prefix = audio.log_mel_spectrogram(x[: SHORT.max_samples], SHORT)
    np.testing.assert_array_equal(long["mel"].numpy(), prefix["mel"].numpy())
    assert long["mel_mask"].numpy().all()


@settings(max_examples=25, deadline=None)
@given(num_samples=st.integers(1, 2 * SHORT.max_samples))
def test_frame_mask_counts_frames_that_start_inside_the_clip(num_samples):
    mask = audio.frame_mask(tf.constant(min(num_samples, SHORT.max_samples)), SHORT).numpy()
    valid = min(math.ceil(num_samples / SHORT.hop_length), SHORT.max_frames)
    assert mask.dtype == np.int32
    np.testing.assert_array_equal(mask, np.arange(SHORT.max_frames) < valid)


def test_runs_inside_tf_data_with_static_shapes():
    clips = [_signal("noise", n) for n in (500, 4_000, 30_000)]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(clips), output_signature=tf.TensorSpec([None], tf.float32)
    )
    ds = ds.map(lambda w: audio.log_mel_spectrogram(w, SHORT)).batch(3)
    assert ds.element_spec["mel"].shape.as_list() == [None, 120, 80]
    batch = next(iter(ds))
    np.testing.assert_array_equal(batch["mel_mask"].numpy().sum(axis=1), [4, 25, 120])
    np.testing.assert_allclose(batch["mel"][1].numpy(), _whisper(clips[1], SHORT)[0], atol=1e-6)


def test_config_from_whisper_preprocessor_dict():
    preprocessor = WhisperFeatureExtractor(feature_size=80).to_dict()
    assert audio.LogMelConfig.from_preprocessor_config(preprocessor) == audio.LogMelConfig()
    short = audio.LogMelConfig.from_preprocessor_config(preprocessor, max_frames=200)
    assert short.max_frames == 200 and short.max_samples == 32_000


@pytest.mark.parametrize(
    "waveform, match",
    [
        (np.zeros((2, 100), np.float32), r"mono with shape \[samples\]"),
        (np.zeros(100, np.int16), "int16 PCM divide by 32768"),
    ],
)
def test_bad_waveform_errors(waveform, match):
    with pytest.raises(ValueError, match=match):
        audio.log_mel_spectrogram(waveform, SHORT)


def test_empty_waveform_error():
    with pytest.raises(tf.errors.InvalidArgumentError, match="waveform is empty"):
        audio.log_mel_spectrogram(np.zeros(0, np.float32), SHORT)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_frames": 0}, "max_frames must be a positive integer"),
        ({"n_mels": 2.5}, "n_mels must be a positive integer"),
        ({"f_max": 9000.0}, "f_max <= sample_rate / 2"),
        ({"max_frames": 1}, "fewer than n_fft // 2 \\+ 1"),
    ],
)
def test_bad_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        audio.LogMelConfig(**kwargs)


def test_unsupported_preprocessor_errors():
    with pytest.raises(ValueError, match="only WhisperFeatureExtractor"):
        audio.LogMelConfig.from_preprocessor_config({"feature_extractor_type": "ASTFeature"})
    with pytest.raises(ValueError, match="dither"):
        audio.LogMelConfig.from_preprocessor_config({"dither": 1e-4})
