"""The cwcl_spoken builder: texts, espeak-ng synthesis, determinism, the built dataset."""

import collections
import re
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

from cwcl_jax.data import audio_files, espeak, labels, spoken, spoken_text

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"
)
# 17 intents: one train example each plus 4 test examples keeps the build at 21 utterances.
SMALL = spoken.SpokenConfig(name="test_intents", task="intents", num_train=17, num_test=4)


def test_intents_and_keywords_cover_the_task():
    assert len(spoken_text.INTENTS) >= 10
    assert len(spoken_text.KEYWORDS) == len(set(spoken_text.KEYWORDS)) == 35
    for intent, templates in spoken_text.INTENT_TEMPLATES.items():
        assert len(templates) >= 6, intent
        for template in templates:
            assert set(re.findall(r"\{(\w+)\}", template)) <= set(spoken_text.SLOTS), template


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), intent=st.sampled_from(spoken_text.INTENTS))
def test_intent_utterances_are_filled_in(seed, intent):
    text = spoken_text.intent_utterance(intent, np.random.default_rng(seed))
    assert text.strip() and "{" not in text and "}" not in text


def test_intent_utterances_vary():
    rng = np.random.default_rng(0)
    texts = {spoken_text.intent_utterance("alarm_set", rng) for _ in range(50)}
    assert len(texts) >= 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "digits"}, r"SpokenConfig\.task must be one of"),
        ({"num_train": 0}, r"SpokenConfig\.num_train must be >= 1"),
        ({"num_test": -3}, r"SpokenConfig\.num_test must be >= 1"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        spoken.SpokenConfig(name="bad", **kwargs)


def test_missing_espeak_says_how_to_install():
    with pytest.raises(RuntimeError, match=r"apt-get install espeak-ng"):
        espeak.require_espeak("espeak-ng-that-does-not-exist")


def test_builder_without_espeak_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(espeak.shutil, "which", lambda name: None)
    builder = spoken.CwclSpoken(config=SMALL, data_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match=r"espeak-ng is not installed.*apt-get install"):
        builder.download_and_prepare()


@needs_espeak
def test_synthesize_places_speech_at_the_requested_level():
    voice = espeak.Voice(peak=0.5, lead_seconds=0.1, tail_seconds=0.0, snr_db=40.0)
    waveform = espeak.synthesize("turn on the lights", voice)
    lead = int(0.1 * audio_files.SAMPLE_RATE)
    assert waveform.dtype == np.float32 and np.all(np.isfinite(waveform))
    assert 0.5 < len(waveform) / audio_files.SAMPLE_RATE < 3.0
    assert np.abs(waveform[lead:]).max() == pytest.approx(0.5, abs=0.05)
    assert np.abs(waveform[:lead]).max() < 0.02  # Only the noise floor before the speech.
    np.testing.assert_array_equal(waveform, espeak.synthesize("turn on the lights", voice))


def test_espeak_failure_names_text_voice_and_exit_code():
    # `false` stands in for an espeak-ng that fails: it exits 1 without output.
    with pytest.raises(RuntimeError, match=r"no audio for 'hello' with voice Voice\(.*exit code 1"):
        espeak.synthesize("hello", espeak.Voice(), binary="false")


@needs_espeak
def test_examples_are_a_function_of_seed_split_and_index():
    first = spoken.synthesize_example(SMALL, "train", 3)
    again = spoken.synthesize_example(SMALL, "train", 3)
    other_index = spoken.synthesize_example(SMALL, "train", 20)
    other_seed = spoken.synthesize_example(spoken.SpokenConfig(name="s", seed=1), "train", 3)
    assert first["text"] == again["text"]
    np.testing.assert_array_equal(first["audio"], again["audio"])
    assert first["intent"] == other_index["intent"] == 3  # Labels cycle through the classes.
    assert first["audio"].shape != other_index["audio"].shape
    assert first["audio"].shape != other_seed["audio"].shape


@needs_espeak
def test_keyword_examples_say_their_keyword():
    config = spoken.SpokenConfig(name="k", task="keywords", num_train=40, num_test=1)
    example = spoken.synthesize_example(config, "train", 36)
    assert example["keyword"] == 1
    assert example["text"] == spoken_text.KEYWORDS[1] == "no"
    assert example["audio"].dtype == np.int16


def _build(data_dir):
    builder = spoken.CwclSpoken(config=SMALL, data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder


def _read_all(builder, split):
    examples = tfds.as_numpy(builder.as_dataset(split=split))
    return sorted(examples, key=lambda e: e["text"])


@pytest.fixture(scope="module")
def small_builder(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    return _build(tmp_path_factory.mktemp("spoken"))


def test_built_dataset_is_balanced_and_deterministic(small_builder, tmp_path):
    train = _read_all(small_builder, "train")
    train_again = _read_all(_build(tmp_path), "train")
    assert small_builder.info.splits["train"].num_examples == 17
    assert small_builder.info.splits["test"].num_examples == 4
    assert collections.Counter(e["intent"] for e in train) == {i: 1 for i in range(17)}
    assert labels.class_names(small_builder, "intent") == list(spoken_text.INTENTS)
    assert small_builder.info.features["audio"].sample_rate == audio_files.SAMPLE_RATE
    for example, again in zip(train, train_again, strict=True):
        assert example["audio"].dtype == np.int16
        assert len(example["audio"]) > 0.4 * audio_files.SAMPLE_RATE
        assert example["text"] == again["text"]
        np.testing.assert_array_equal(example["audio"], again["audio"])


def test_test_split_differs_from_train(small_builder):
    train, test = _read_all(small_builder, "train"), _read_all(small_builder, "test")
    assert sorted(e["intent"] for e in test) == [0, 1, 2, 3]
    train_audio = {e["audio"].tobytes() for e in train}
    assert not any(e["audio"].tobytes() in train_audio for e in test)


def test_registered_configs():
    names = {config.name: config for config in spoken.CwclSpoken.BUILDER_CONFIGS}
    assert {"intents", "keywords", "intents_tiny", "keywords_tiny"} <= set(names)
    assert names["keywords"].label_key == "keyword"
    assert names["intents"].num_test % len(spoken_text.INTENTS) == 0  # Balanced test split.
    assert names["keywords"].num_test % len(spoken_text.KEYWORDS) == 0


def test_class_names_helper():
    info = spoken.CwclSpoken(config="keywords_tiny", data_dir="/nonexistent").info
    assert labels.class_names(info, "keyword")[:3] == ["yes", "no", "up"]
    intents = spoken.CwclSpoken(config="intents_tiny", data_dir="/nonexistent")
    assert labels.class_names(intents, "intent", readable=True)[0] == "alarm set"
    with pytest.raises(ValueError, match=r"no feature 'label'.*'intent'"):
        labels.class_names(intents, "label")
    with pytest.raises(ValueError, match=r"'text' is a Text, not a ClassLabel"):
        labels.class_names(intents, "text")


def test_registered_with_tfds():
    assert "cwcl_spoken" in tfds.list_builders(with_community_datasets=False)


@needs_espeak
def test_tfds_load_prepares_and_reads_keywords_tiny(tmp_path):
    # As a user would, with cwcl_jax.data imported: tfds.load builds it, then reads it.
    test = tfds.load("cwcl_spoken/keywords_tiny", data_dir=str(tmp_path), split="test")
    examples = list(test.as_numpy_iterator())
    builder = tfds.builder("cwcl_spoken/keywords_tiny", data_dir=str(tmp_path))
    assert builder.info.file_format.value == "tfrecord"
    assert sorted(e["keyword"] for e in examples) == list(range(len(spoken_text.KEYWORDS)))
    for example in examples:
        assert example["text"].decode() == spoken_text.KEYWORDS[example["keyword"]]
        assert example["audio"].dtype == np.int16
        assert len(example["audio"]) > 0.2 * audio_files.SAMPLE_RATE
