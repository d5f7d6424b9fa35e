"""The cwcl_slurp builder on tests/fixtures/slurp_tiny, a fake release in SLURP's layout."""

import glob
import json
import os
import shutil
import wave

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cwcl_jax.data import audio_files, labels, slurp

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "slurp_tiny")
TEXT_DIR = os.path.join(FIXTURE, "dataset", "slurp")


def _listed(jsonl_name: str) -> dict[str, dict]:
    """recording file -> its SLURP entry, read straight from the fixture's jsonl."""
    with open(os.path.join(TEXT_DIR, jsonl_name)) as f:
        entries = [json.loads(line) for line in f]
    return {r["file"]: entry for entry in entries for r in entry["recordings"]}


def _wav_samples(folder: str, file: str) -> np.ndarray:
    stem = os.path.splitext(file)[0]
    with wave.open(os.path.join(FIXTURE, "audio", folder, stem + ".wav")) as f:
        return np.frombuffer(f.readframes(f.getnframes()), "<i2")


def _examples(builder, split):
    return list(tfds.as_numpy(builder.as_dataset(split=split)))


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return slurp.build_slurp_dataset(FIXTURE, tmp_path_factory.mktemp("tfds"))


def test_splits_and_the_missing_recording(real):
    splits = real.info.splits
    assert {name: splits[name].num_examples for name in splits} == {
        "train": 6,
        "validation": 1,
        "test": 2,
    }
    bad = real.info.metadata["bad_records"]
    assert bad["count"] == 1
    assert "train.jsonl:5 (audio-missing.flac): file not found" in bad["first"][0]


def test_examples_match_the_release_files(real):
    intents = labels.class_names(real, "intent")
    scenarios = labels.class_names(real, "scenario")
    for split, jsonl in (
        ("train", "train.jsonl"),
        ("validation", "devel.jsonl"),
        ("test", "test.jsonl"),
    ):
        listed = _listed(jsonl)
        for example in _examples(real, split):
            entry = listed[example["recording"].decode()]
            assert example["text"].decode() == entry["sentence"]
            assert intents[example["intent"]] == entry["intent"]
            assert scenarios[example["scenario"]] == entry["scenario"]
            assert example["slurp_id"] == entry["slurp_id"]
            expected = _wav_samples("slurp_real", example["recording"].decode())
            np.testing.assert_array_equal(example["audio"], expected)


def test_tfds_load_reads_the_built_dataset(real):
    # As a user would, with cwcl_jax.data imported.
    assert real.info.file_format.value == "tfrecord"
    test = tfds.load("cwcl_slurp/real", data_dir=real.data_dir_root, split="test")
    examples = list(test.as_numpy_iterator())
    listed = _listed("test.jsonl")
    assert sorted(e["recording"].decode() for e in examples) == sorted(listed)
    for example in examples:
        assert example["text"].decode() == listed[example["recording"].decode()]["sentence"]
        expected = _wav_samples("slurp_real", example["recording"].decode())
        np.testing.assert_array_equal(example["audio"], expected)


def test_class_names_come_from_every_split(real):
    assert labels.class_names(real, "intent") == [
        "alarm_remove",
        "alarm_set",
        "iot_hue_lightoff",
        "takeaway_order",
        "weather_query",
    ]
    assert labels.class_names(real, "scenario") == ["alarm", "iot", "takeaway", "weather"]
    assert real.info.features["audio"].sample_rate == audio_files.SAMPLE_RATE


def test_synthetic_train_recordings(tmp_path):
    builder = slurp.build_slurp_dataset(FIXTURE, tmp_path, synthetic=True)
    assert builder.info.full_name.startswith("cwcl_slurp/real_and_synth")
    recordings = {e["recording"].decode() for e in _examples(builder, "train")}
    assert "audio-00080-headset.flac" in recordings and len(recordings) == 7
    assert "play_music" in labels.class_names(builder, "intent")


def test_raise_mode_names_the_missing_recording(tmp_path):
    with pytest.raises(ValueError, match=r"train\.jsonl:5 \(audio-missing\.flac\): file not found"):
        slurp.build_slurp_dataset(FIXTURE, tmp_path, bad_records="raise")


def test_missing_release_files_explain_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset/slurp/train\.jsonl is missing.*slurp"):
        slurp.build_slurp_dataset(tmp_path / "empty", tmp_path / "tfds")


def test_malformed_entries_are_counted(tmp_path):
    copy = tmp_path / "slurp"
    shutil.copytree(FIXTURE, copy)
    with open(copy / "dataset" / "slurp" / "test.jsonl", "a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"sentence": "no intent", "recordings": []}) + "\n")
        f.write(json.dumps({"sentence": " ", "intent": "a_b", "recordings": []}) + "\n")
    builder = slurp.build_slurp_dataset(copy, tmp_path / "tfds")
    first = " | ".join(builder.info.metadata["bad_records"]["first"])
    assert builder.info.metadata["bad_records"]["count"] == 4
    assert "test.jsonl:3: malformed SLURP entry (JSONDecodeError" in first
    assert "test.jsonl:4: malformed SLURP entry (KeyError('intent')" in first
    assert "test.jsonl:5: empty sentence" in first
    assert builder.info.splits["test"].num_examples == 2


def _flac_only_copy(tmp_path):
    copy = tmp_path / "slurp"
    shutil.copytree(FIXTURE, copy)
    for wav in glob.glob(str(copy / "audio" / "*" / "*.wav")):
        os.remove(wav)
    return copy


def test_flac_without_soundfile_fails_up_front(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_files, "soundfile_available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install soundfile.*sox"):
        slurp.build_slurp_dataset(_flac_only_copy(tmp_path), tmp_path / "tfds")


def test_flac_release_with_soundfile(tmp_path):
    pytest.importorskip("soundfile")
    builder = slurp.build_slurp_dataset(_flac_only_copy(tmp_path), tmp_path / "tfds")
    for example in _examples(builder, "test"):
        expected = _wav_samples("slurp_real", example["recording"].decode())
        np.testing.assert_array_equal(example["audio"], expected)


def test_command_line(tmp_path, capsys):
    slurp.main(["--slurp_dir", FIXTURE, "--data_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "train: 6 examples" in out and "validation: 1 examples" in out
    assert "skipped bad records: 1" in out
