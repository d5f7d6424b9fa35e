"""The cwcl_manifest builder on tests/fixtures/manifest_tiny (see scripts/make_data_fixtures.py)."""

import json
import os
import shutil
import wave

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cwcl_jax.data import audio_files, manifest, manifest_records

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "manifest_tiny")
SLURP_AUDIO = os.path.join(os.path.dirname(__file__), "fixtures", "slurp_tiny", "audio")
SLURP_FLAC = os.path.join(SLURP_AUDIO, "slurp_real", "audio-00010-headset.flac")


def _by_path(builder, split, decoders=None):
    examples = tfds.as_numpy(builder.as_dataset(split=split, decoders=decoders))
    return {example["path"].decode(): example for example in examples}


def _fixture_image(name: str) -> np.ndarray:
    return tf.io.decode_image(tf.io.read_file(os.path.join(FIXTURE, "images", name))).numpy()


@pytest.fixture(scope="module")
def images_builder(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    return manifest.build_manifest_dataset(os.path.join(FIXTURE, "images.jsonl"), data_dir, "img")


def test_image_manifest_splits_and_bad_records(images_builder):
    splits = images_builder.info.splits
    assert {name: splits[name].num_examples for name in splits} == {"train": 2, "test": 2}
    bad = images_builder.info.metadata["bad_records"]
    assert bad["count"] == 4
    reasons = " | ".join(bad["first"])
    for expected in (
        r"images.jsonl:5 (images/corrupt.jpg): undecodable image",
        r"images.jsonl:6 (images/missing.png): file not found",
        r"images.jsonl:7 (images/red.png): empty text",
        r"images.jsonl:8: invalid JSON",
    ):
        assert expected in reasons


def test_images_are_stored_as_rgb(images_builder):
    train, test = _by_path(images_builder, "train"), _by_path(images_builder, "test")
    assert train["images/red.png"]["text"] == b"a red square on black"
    np.testing.assert_array_equal(train["images/red.png"]["image"], _fixture_image("red.png"))
    gray = _fixture_image("gray.png")
    np.testing.assert_array_equal(train["images/gray.png"]["image"], np.repeat(gray, 3, -1))
    rgba = _fixture_image("rgba.png")
    np.testing.assert_array_equal(test["images/rgba.png"]["image"], rgba[..., :3])
    assert test["images/blue.jpg"]["image"].shape == (20, 24, 3)


def test_rgb_jpeg_bytes_are_kept_as_they_are(images_builder):
    stored = _by_path(images_builder, "test", decoders={"image": tfds.decode.SkipDecoding()})
    with open(os.path.join(FIXTURE, "images", "blue.jpg"), "rb") as f:
        assert stored["images/blue.jpg"]["image"] == f.read()


def test_tfds_load_reads_the_built_dataset(images_builder):
    # As a user would, with cwcl_jax.data imported.
    assert images_builder.info.file_format.value == "tfrecord"
    train = tfds.load("cwcl_manifest/img", data_dir=images_builder.data_dir_root, split="train")
    examples = {e["path"].decode(): e for e in train.as_numpy_iterator()}
    assert sorted(examples) == ["images/gray.png", "images/red.png"]
    assert examples["images/red.png"]["text"] == b"a red square on black"
    np.testing.assert_array_equal(examples["images/red.png"]["image"], _fixture_image("red.png"))


def test_array_record_on_request(tmp_path):
    config = manifest.ManifestConfig(name="ar", manifest=os.path.join(FIXTURE, "images.csv"))
    builder = manifest.CwclManifest(
        config=config, data_dir=str(tmp_path), file_format="array_record"
    )
    builder.download_and_prepare()
    assert builder.info.file_format.value == "array_record"
    source = builder.as_data_source(split="train")
    assert [source[i]["text"] for i in range(len(source))] == [b"a red square, on black"]


def test_csv_manifest_with_quoted_text(tmp_path):
    builder = manifest.build_manifest_dataset(os.path.join(FIXTURE, "images.csv"), tmp_path, "csv")
    train = _by_path(builder, "train")
    assert train["images/red.png"]["text"] == b"a red square, on black"
    assert builder.info.splits["test"].num_examples == 1
    assert builder.info.metadata["bad_records"]["first"] == [
        f"{os.path.join(FIXTURE, 'images.csv')}:4 (images/missing.png): file not found: "
        f"{os.path.join(FIXTURE, 'images', 'missing.png')}"
    ]


def _pcm16(name: str) -> np.ndarray:
    with wave.open(os.path.join(FIXTURE, "audio", name)) as f:
        return np.frombuffer(f.readframes(f.getnframes()), "<i2")


def test_audio_manifest_resamples_to_16k(tmp_path):
    builder = manifest.build_manifest_dataset(os.path.join(FIXTURE, "audio.jsonl"), tmp_path, "aud")
    assert builder.info.features["audio"].sample_rate == 16000
    train, test = _by_path(builder, "train"), _by_path(builder, "test")
    assert sorted(train) == ["audio/mono16k.wav", "audio/pcm24_48k.wav", "audio/u8_8k.wav"]
    # Already 16 kHz 16-bit: stored sample for sample.
    np.testing.assert_array_equal(train["audio/mono16k.wav"]["audio"], _pcm16("mono16k.wav"))
    for example in [*train.values(), *test.values()]:
        assert example["audio"].dtype == np.int16
        assert len(example["audio"]) == 6400  # Every fixture clip is 0.4 s long.
    stereo = test["audio/stereo22k.wav"]["audio"] / 32768.0
    left = _pcm16("stereo22k.wav")[0::2] / 32768.0  # The right channel is 0.8 x the left.
    expected = audio_files.resample(0.9 * left, 22050, 16000)
    np.testing.assert_allclose(stereo, expected, atol=2 / 32768)
    reasons = " | ".join(builder.info.metadata["bad_records"]["first"])
    assert "(audio/empty.wav): empty audio" in reasons
    assert "(audio/not_audio.wav)" in reasons and "not a PCM WAV file" in reasons
    assert "(audio/missing.wav): file not found" in reasons


def test_raise_mode_names_the_first_bad_record(tmp_path):
    with pytest.raises(ValueError, match=r"bad record at .*images\.jsonl:7 \(images/red\.png\)"):
        manifest.build_manifest_dataset(
            os.path.join(FIXTURE, "images.jsonl"), tmp_path, "strict", bad_records="raise"
        )


def test_raise_mode_on_a_media_problem(tmp_path):
    with pytest.raises(ValueError, match=r"images\.csv:4 \(images/missing\.png\): file not found"):
        manifest.build_manifest_dataset(
            os.path.join(FIXTURE, "images.csv"), tmp_path, "strict", bad_records="raise"
        )


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(FIXTURE, tmp_path / "copy")
    builder = manifest.build_manifest_dataset("copy/images.csv", "tfds", "moved")
    assert builder.info.splits["train"].num_examples == 1


def test_overwrite_rebuilds_and_default_reuses(tmp_path):
    path = tmp_path / "pairs.jsonl"
    shutil.copytree(os.path.join(FIXTURE, "images"), tmp_path / "images")
    rows = [{"image": "images/red.png", "text": "red"}, {"image": "images/gray.png", "text": "x"}]
    path.write_text(json.dumps(rows[0]) + "\n")
    first = manifest.build_manifest_dataset(path, tmp_path, "d")
    assert first.info.splits["train"].num_examples == 1
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    reused = manifest.build_manifest_dataset(path, tmp_path, "d")
    assert reused.info.splits["train"].num_examples == 1
    rebuilt = manifest.build_manifest_dataset(path, tmp_path, "d", overwrite=True)
    assert rebuilt.info.splits["train"].num_examples == 2


def test_command_line(tmp_path, capsys):
    pairs = os.path.join(FIXTURE, "images.jsonl")
    manifest.main([pairs, "--data_dir", str(tmp_path), "--name", "cli"])
    out = capsys.readouterr().out
    assert "train: 2 examples" in out and "test: 2 examples" in out
    assert "skipped bad records: 4" in out
    assert "cwcl_manifest/cli" in out


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("both.jsonl", '{"image": "a.png", "audio": "a.wav", "text": "t"}\n', "exactly one of"),
        ("neither.jsonl", '{"caption": "t", "file": "a.png"}\n', "exactly one of"),
        ("empty.jsonl", "\n\n", "has no records"),
        ("broken.jsonl", "{nope\n", r"broken\.jsonl:1: not a JSON object"),
        ("pairs.tsv", "image\ttext\n", r"expected a \.jsonl or \.csv file"),
    ],
)
def test_modality_detection_errors(tmp_path, name, text, message):
    with pytest.raises(ValueError, match=message):
        manifest_records.detect_modality(_write(tmp_path, name, text))


def test_csv_without_required_column(tmp_path):
    path = _write(tmp_path, "m.csv", "image,caption\na.png,hello\n")
    with pytest.raises(ValueError, match=r"m\.csv: the CSV header .* lacks .* \['text'\]"):
        manifest.build_manifest_dataset(path, tmp_path, "x")


def test_invalid_split_name_is_a_bad_record(tmp_path):
    path = _write(tmp_path, "m.jsonl", '{"image": "a.png", "text": "t", "split": "Train Set"}\n')
    bad = manifest_records.BadRecords("skip")
    assert manifest_records.read_records(path, "image", bad) == []
    assert "invalid split name 'Train Set'" in bad.first[0]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"manifest_path": "/no/such/manifest.jsonl"}, FileNotFoundError, "manifest_path"),
        ({"name": "my data"}, ValueError, r"name 'my data' must be"),
        ({"bad_records": "ignore"}, ValueError, r"bad_records must be one of"),
        ({"modality": "video"}, ValueError, r"modality must be one of"),
    ],
)
def test_argument_errors(tmp_path, kwargs, error, message):
    arguments = {"manifest_path": os.path.join(FIXTURE, "images.jsonl"), "name": "ok"}
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        manifest.build_manifest_dataset(data_dir=tmp_path, **arguments)


def test_flac_without_soundfile_fails_up_front(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_files, "soundfile_available", lambda: False)
    path = _write(tmp_path, "m.jsonl", json.dumps({"audio": SLURP_FLAC, "text": "wake up"}) + "\n")
    with pytest.raises(ImportError, match=r"audio-00010-headset\.flac needs the `soundfile`"):
        manifest.build_manifest_dataset(path, tmp_path, "flac")


def test_flac_with_soundfile(tmp_path):
    pytest.importorskip("soundfile")
    path = _write(tmp_path, "m.jsonl", json.dumps({"audio": SLURP_FLAC, "text": "wake up"}) + "\n")
    builder = manifest.build_manifest_dataset(path, tmp_path, "flac")
    (example,) = _by_path(builder, "train").values()
    wav_copy = SLURP_FLAC[: -len(".flac")] + ".wav"
    with wave.open(wav_copy) as f:
        expected = np.frombuffer(f.readframes(f.getnframes()), "<i2")
    np.testing.assert_array_equal(example["audio"], expected)
