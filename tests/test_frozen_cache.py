"""The frozen-tower cache: training from it equals training on the fly; an interrupted
build resumes to the same bytes; a mismatched, incomplete or damaged cache is refused with
the field named; frozen-side augmentation is refused; the store and the pipeline join
against plain numpy references; the step with cached `frozen_raw` equals the step that
runs the frozen tower."""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import chex
import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file
from step_fixtures import init_state, make_batch, make_parts, with_accum

from cwcl_jax import experiment, frozen_cache, main, train_step
from cwcl_jax.config_utils import load_sibling
from cwcl_jax.data import pipeline, preprocess, sources
from cwcl_jax.frozen_cache import builder, identity, store
from cwcl_jax.models import frozen_features

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "configs" / "demo.py")
DIM = 384  # all-MiniLM-L6-v2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _tiny(data_dir: str, *, enabled: bool = True) -> ml_collections.ConfigDict:
    """demo.py:tiny (cwcl_shapes/tiny, 256 train examples, batch 16: 16 build batches in 4
    chunks of 4) with the cache switched on."""
    config = load_sibling(DEMO, "demo").get_config("tiny")
    config.data.data_dir = data_dir
    config.frozen_cache.enabled = enabled
    config.frozen_cache.chunk_steps = 4
    return config


@pytest.fixture(scope="module")
def built(data_dir, tmp_path_factory):
    """(experiment, frozen params, directory of an uninterrupted build)."""
    exp, frozen_params, _ = experiment.build_experiment(_tiny(data_dir), with_weights=True)
    directory = tmp_path_factory.mktemp("reference_cache")
    assert frozen_cache.build(exp, frozen_params, directory) is not None
    return exp, frozen_params, directory


def _file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# --- training from the cache --------------------------------------------------------------


def _train_records(workdir: Path) -> list[dict]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r]  # not the evaluation's


@pytest.mark.parametrize("evaluate", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_training_from_cache_matches_training_on_the_fly(tmp_path, data_dir, evaluate):
    """Same losses step by step; zero-shot evaluation (the frozen tower on class prompts,
    both towers on the test split) gives the same results with and without the cache."""
    runs, evals = {}, {}
    for enabled in (False, True):
        config = _tiny(data_dir, enabled=enabled)
        config.total_steps, config.log_every_steps, config.checkpoint_every_steps = 2, 1, 2
        config.optimizer.warmup_steps = 1
        config.eval_every_steps = 2 if evaluate else 0
        main.train(config, str(tmp_path / str(enabled)))
        runs[enabled] = _train_records(tmp_path / str(enabled))
        if evaluate:
            evals[enabled] = json.loads((tmp_path / str(enabled) / "eval_results.json").read_text())
    # The cached run built its cache first, in the default place.
    manifest = json.loads((tmp_path / "True" / "frozen_cache" / "manifest.json").read_text())
    assert manifest["state"] == "complete"
    assert [r["step"] for r in runs[True]] == [1, 2]
    for on_the_fly, cached in zip(runs[False], runs[True], strict=True):
        for key in ("loss", "grad_norm", "accuracy_t2f", "target_entropy", "temperature"):
            np.testing.assert_allclose(cached[key], on_the_fly[key], rtol=1e-5, err_msg=key)
    if evaluate:
        assert set(evals[True]["tasks"]) == {"shape", "color", "caption"}
        _assert_same_results(evals[True], evals[False])


def _assert_same_results(got, expected, where: str = "results") -> None:
    """Nested eval results: numbers to float32 tolerance, everything else equal."""
    if isinstance(expected, dict):
        assert set(got) == set(expected), where
        for key in expected:
            _assert_same_results(got[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            _assert_same_results(g, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-7), where
    else:
        assert got == expected, where


@pytest.mark.parametrize("accum_steps, frozen_head", [(1, False), (2, True)])
def test_step_with_cached_frozen_raw_equals_frozen_forward(accum_steps, frozen_head):
    """Three steps with batch["frozen_raw"] (and no frozen inputs) == three steps running
    the frozen tower; a frozen-side head still trains on the cached raw embeddings."""
    parts = with_accum(make_parts(frozen_head=frozen_head), accum_steps)
    batch = make_batch(8)
    state, frozen = init_state(parts, batch)
    cached_batch = {
        "image": batch["image"],
        "frozen_raw": frozen_features(parts.frozen_module, frozen, batch["text"]),
    }
    step = jax.jit(lambda s, b: train_step.train_step(parts, s, frozen, b))
    on_the_fly, cached = state, jax.tree.map(np.copy, state)
    for _ in range(3):
        on_the_fly, expected = step(on_the_fly, batch)
        cached, got = step(cached, cached_batch)
        chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(cached.params, on_the_fly.params, rtol=1e-6, atol=1e-7)
    if frozen_head:  # the frozen-side head got gradients from the cached embeddings
        assert not np.allclose(cached.params["frozen_projection"]["kernel"],
                               state.params["frozen_projection"]["kernel"])  # fmt: skip


def test_cached_batch_spec_and_check_batch(data_dir):
    exp, _, _ = experiment.build_experiment(_tiny(data_dir), with_weights=False)
    assert set(exp.batch_spec) == {"image", "frozen_raw"}
    assert exp.batch_spec["frozen_raw"].shape == (16, DIM)
    good = {"image": {"pixels": np.zeros((16, 32, 32, 3), np.float32)},
            "frozen_raw": np.zeros((16, DIM), np.float32)}  # fmt: skip
    experiment.check_batch(good, exp.batch_spec)
    with pytest.raises(ValueError, match=r"frozen_raw is \(\(16, 8\), 'float32'\)"):
        experiment.check_batch({**good, "frozen_raw": np.zeros((16, 8), np.float32)},
                               exp.batch_spec)  # fmt: skip
    with pytest.raises(ValueError, match="no 'frozen_raw' entry"):
        experiment.check_batch({"image": good["image"]}, exp.batch_spec)


# --- building -----------------------------------------------------------------------------


def test_interrupted_build_resumes_to_identical_bytes(tmp_path, built):
    exp, frozen_params, reference = built
    directory = tmp_path / "cache"
    assert frozen_cache.build(exp, frozen_params, directory, max_chunks=1) is None
    assert json.loads((directory / "manifest.json").read_text())["state"] == "building"
    with pytest.raises(ValueError, match="incomplete"):
        frozen_cache.open_cache(directory)

    def killed_after_chunk_1(chunk):
        if chunk == 1:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt, match="killed"):
        frozen_cache.build(exp, frozen_params, directory, on_chunk=killed_after_chunk_1)
    resumed_chunks = []
    cache = frozen_cache.build(exp, frozen_params, directory, on_chunk=resumed_chunks.append)
    assert resumed_chunks == [2, 3]  # chunks 0 and 1 were on disk
    assert _file_bytes(directory) == _file_bytes(reference)
    assert sorted(os.listdir(directory)) == [
        "embeddings-00000-of-00001.npy", "indices-00000-of-00001.npy", "manifest.json",
    ]  # fmt: skip
    np.testing.assert_array_equal(cache.present(), np.arange(256))


def test_build_of_a_complete_cache_only_opens_it(built):
    exp, frozen_params, reference = built
    before = _file_bytes(reference)
    chunks = []
    cache = frozen_cache.build(exp, frozen_params, reference, on_chunk=chunks.append)
    assert chunks == [] and _file_bytes(reference) == before
    assert cache.manifest["content_sha256"] == cache.content_sha256()


def test_cache_holds_the_frozen_towers_outputs(built):
    """Rows against the tower run here, on captions tokenized independently of the pipeline."""
    exp, frozen_params, directory = built
    cache = frozen_cache.open_cache(directory)
    config = exp.config
    split = sources.open_split(config.data.name, "train", data_dir=config.data.data_dir)
    indices = [0, 7, 100, 255]
    captions = [record["caption"].decode() for record in split.read(indices)]
    tokens = exp.frozen_processor(captions, max_length=16, padding="max_length",
                                  truncation=True, return_tensors="np")  # fmt: skip
    inputs = {k: np.asarray(tokens[k], np.int32) for k in ("input_ids", "attention_mask")}
    params = jax.device_get(frozen_params)
    expected = exp.parts.frozen_module.apply({"params": params}, inputs)
    np.testing.assert_allclose(cache.rows(np.array(indices)), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(cache.lookup(7), cache.rows(np.array([7]))[0])
    chex.assert_shape(cache.rows(np.arange(5)), (5, DIM))


# --- refusing what does not match ---------------------------------------------------------


def _checkpoint_copy(tmp_path: Path, changed_file: str) -> str:
    """The frozen checkpoint with one file changed (weights perturbed or a vocab line added)."""
    source = Path(load_sibling(DEMO, "common").minilm_path())
    copy = tmp_path / "minilm_copy"
    copy.mkdir()
    for path in source.iterdir():
        if path.name != changed_file:
            (copy / path.name).symlink_to(path)
    if changed_file == "model.safetensors":
        tensors = load_file(source / changed_file)
        name = sorted(tensors)[0]
        tensors[name] = tensors[name] + np.float32(1e-3)
        save_file(tensors, copy / changed_file)
    else:
        (copy / changed_file).write_text((source / changed_file).read_text() + "extra\n")
    return str(copy)


def _set(path: str, value):
    def change(config, _tmp_path):
        *parents, leaf = path.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value(_tmp_path) if callable(value) else value

    return change


MISMATCHES = {
    "text length": (_set("data.max_text_length", 8),
                    "preprocessing.max_text_length: expected 8, found 16"),
    "split": (_set("data.train_split", "train[:50%]"),
              "dataset.num_examples: expected 128, found 256"),
    "split name": (_set("data.train_split", "train[:50%]"),
                   "dataset.split: expected 'train[:50%]', found 'train'"),
    "dataset": (_set("data.name", "cwcl_shapes/tiny:1.0.0"), None),  # same dataset: accepted
    "checkpoint": (_set("model.frozen.path", lambda t: _checkpoint_copy(t, "model.safetensors")),
                   "frozen.weights_sha256: expected"),
    "tokenizer": (_set("model.frozen.path", lambda t: _checkpoint_copy(t, "vocab.txt")),
                  "preprocessing.tokenizer_sha256: expected"),
    "tower dtype": (_set("model.frozen.overrides", {"dtype": "bfloat16"}),
                    "frozen.overrides.dtype: expected 'bfloat16', found '<absent>'"),
}  # fmt: skip


@pytest.mark.parametrize("change, message", MISMATCHES.values(), ids=MISMATCHES.keys())
def test_mismatched_cache_is_refused_naming_the_field(tmp_path, data_dir, built, change, message):
    _, _, directory = built
    config = _tiny(data_dir)
    change(config, tmp_path)
    expected = identity.describe(config, builder.open_train_split(config), DIM)
    if message is None:
        frozen_cache.open_cache(directory, expected)
        return
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        frozen_cache.open_cache(directory, expected)
    assert f"Delete {directory}" in str(error.value)


def test_other_dataset_version_is_refused(tmp_path, data_dir, built):
    _, _, reference = built
    directory = tmp_path / "old"
    shutil.copytree(reference, directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["dataset"]["version"] = "0.9.0"
    store.write_json(directory / "manifest.json", manifest)
    config = _tiny(data_dir)
    expected = identity.describe(config, builder.open_train_split(config), DIM)
    with pytest.raises(
        ValueError, match=re.escape("dataset.version: expected '1.0.0', found '0.9.0'")
    ):
        frozen_cache.open_cache(directory, expected)


def test_build_refuses_a_mismatched_cache_and_leaves_it_alone(data_dir, built):
    _, _, reference = built
    config = _tiny(data_dir)
    config.data.max_text_length = 8
    exp, frozen_params, _ = experiment.build_experiment(config, with_weights=True)
    before = _file_bytes(reference)
    with pytest.raises(ValueError, match="preprocessing.max_text_length"):
        frozen_cache.build(exp, frozen_params, reference)
    assert _file_bytes(reference) == before


def test_resume_with_another_build_layout_is_refused(tmp_path, data_dir, built):
    exp, frozen_params, _ = built
    directory = tmp_path / "cache"
    frozen_cache.build(exp, frozen_params, directory, max_chunks=1)
    config = _tiny(data_dir)
    config.frozen_cache.chunk_steps = 2
    other = dataclasses.replace(exp, config=config)
    with pytest.raises(ValueError, match="build.chunk_steps: expected 2, found 4"):
        frozen_cache.build(other, frozen_params, directory)


def test_damaged_incomplete_or_missing_cache_is_refused(tmp_path, built):
    _, _, reference = built
    with pytest.raises(ValueError, match="no frozen cache in"):
        frozen_cache.open_cache(tmp_path / "nothing")
    damaged = tmp_path / "damaged"
    shutil.copytree(reference, damaged)
    embeddings = damaged / "embeddings-00000-of-00001.npy"
    data = bytearray(embeddings.read_bytes())
    data[-1] ^= 1
    embeddings.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="do not hash to the manifest's content_sha256"):
        frozen_cache.open_cache(damaged)
    frozen_cache.open_cache(damaged, verify=False)  # opt-out for huge caches
    (damaged / "indices-00000-of-00001.npy").unlink()
    with pytest.raises(ValueError, match="shard unreadable"):
        frozen_cache.open_cache(damaged, verify=False)


def _frozen_image_config(**data_fields) -> ml_collections.ConfigDict:
    common = load_sibling(DEMO, "common")
    config = load_sibling(DEMO, "demo").get_config("tiny")
    config.model.frozen = common.tower("image", arch="tiny_vit", image_size=32, num_layers=1)
    config.model.trainable = common.tower("text", arch="tiny_bert")
    config.frozen_cache.enabled = True
    for name, value in data_fields.items():
        config.data[name] = value
    return config


@pytest.mark.parametrize("field", ["augment", "flip"])
def test_frozen_side_augmentation_with_cache_is_refused(field):
    config = _frozen_image_config(**{field: True})
    with pytest.raises(ValueError, match=f"frozen_cache.enabled with data.{field}=True"):
        experiment.build_experiment(config, with_weights=False)
    config.frozen_cache.enabled = False
    frozen_cache.check_config(config)  # without a cache the augmentation is fine
    trainable_side = _tiny("unused")  # augmenting the trainable image tower is fine too
    trainable_side.data[field] = True
    frozen_cache.check_config(trainable_side)


@pytest.mark.parametrize(
    "feature, path, several",
    [
        (tfds.features.FeaturesDict({"caption": tfds.features.Text()}), "caption", False),
        (tfds.features.FeaturesDict(
            {"captions": tfds.features.Sequence({"text": tfds.features.Text()})}),
         "captions/text", True),
        (tfds.features.FeaturesDict(
            {"texts": tfds.features.Tensor(shape=(None,), dtype=np.str_)}), "texts", True),
    ],
    ids=["one", "coco-like", "string-list"],
)  # fmt: skip
def test_several_captions_per_example_are_refused(feature, path, several):
    split = sources.Split(name="toy train", features=feature, records=[], encoded=())
    if not several:
        identity.check_single_caption(split, path)
        return
    with pytest.raises(ValueError, match=f"feature '{path}' holds several captions"):
        identity.check_single_caption(split, path)


def test_chunk_steps_must_be_positive():
    config = _tiny("unused")
    config.frozen_cache.chunk_steps = 0
    with pytest.raises(ValueError, match="config.frozen_cache.chunk_steps must be >= 1"):
        frozen_cache.check_config(config)


# --- the store and the pipeline join, against numpy references ----------------------------


def _write_cache(directory: Path, shards: list[np.ndarray], table: np.ndarray) -> None:
    """A complete cache whose process p holds rows `table[shards[p]]`, one chunk per shard."""
    directory.mkdir(parents=True, exist_ok=True)
    count, dim = len(shards), table.shape[1]
    for process, indices in enumerate(shards):
        store.write_chunk(directory, process, 0, indices, table[indices])
        store.assemble_shard(directory, process, count, 1, dim)
    manifest = {
        "frozen": {"modality": "text"},
        "dataset": {"num_examples": len(table)},
        "embedding": {"dim": dim, "dtype": "float32"},
        "shards": store.shard_entries(directory, count),
        "state": "complete",
    }
    manifest["content_sha256"] = store.FrozenCache(directory, manifest).content_sha256()
    store.write_json(directory / "manifest.json", manifest)
    store.remove_build_files(directory, count)


def _reference_hash(table: np.ndarray, present: np.ndarray) -> str:
    """sha256 of (int64 index, float32 row) in index order, written out plainly."""
    digest = hashlib.sha256()
    for start in range(0, len(present), 4096):
        block = np.sort(present)[start : start + 4096]
        digest.update(block.astype("<i8").tobytes())
        digest.update(table[block].astype("<f4").tobytes())
    return digest.hexdigest()


@settings(max_examples=15, deadline=None)
@given(
    num_examples=st.integers(1, 40),
    processes=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_store_reads_rows_by_index_whatever_the_layout(num_examples, processes, seed):
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(num_examples, 3)).astype(np.float32)
    present = np.flatnonzero(rng.random(num_examples) < 0.8)
    owner = rng.integers(0, processes, len(present))
    shards = [rng.permutation(present[owner == p]) for p in range(processes)]
    with tempfile.TemporaryDirectory() as tmp:
        _write_cache(Path(tmp), shards, table)
        cache = frozen_cache.open_cache(tmp)
        np.testing.assert_array_equal(cache.present(), present)
        np.testing.assert_array_equal(cache.rows(present[::-1]), table[present[::-1]])
        assert cache.manifest["content_sha256"] == _reference_hash(table, present)
        for missing in sorted(set(range(num_examples)) - set(present.tolist()))[:3]:
            with pytest.raises(preprocess.BadRecord, match="no frozen embedding"):
                cache.lookup(missing)


def test_store_refuses_duplicate_rows(tmp_path):
    table = np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="appears twice"):
        _write_cache(tmp_path, [np.array([0, 1]), np.array([1, 2])], table)


def test_pipeline_joins_cached_rows_and_replaces_examples_without_one(tmp_path, data_dir, built):
    """The train pipeline reads no text, joins frozen_raw by index, and treats an example
    missing from the cache as a bad record (as its frozen side was when it was built)."""
    config = _tiny(data_dir)
    table = np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)
    missing = np.array([5, 17])
    _write_cache(tmp_path / "cache", [np.setdiff1d(np.arange(256), missing)], table)
    cache = frozen_cache.open_cache(tmp_path / "cache")
    local = pipeline.make_local_pipeline(config.data, split="train", global_batch_size=16,
                                         seed=0, frozen_cache=cache)  # fmt: skip
    seen = []
    for _ in range(16):  # one epoch: every index drawn once
        batch = next(local)
        assert "text" not in batch and batch["image"]["pixels"].shape == (16, 32, 32, 3)
        chex.assert_shape(batch["frozen_raw"], (16, 4))
        np.testing.assert_array_equal(batch["frozen_raw"], table[batch["index"]])
        seen += batch["index"].tolist()
    assert not set(seen) & set(missing.tolist())
    assert local.bad_records >= 2
    with pytest.raises(ValueError, match="holds 256 examples"):
        pipeline.make_local_pipeline(config.data, split="train[:50%]", global_batch_size=16,
                                     seed=0, frozen_cache=cache)  # fmt: skip


# --- the command --------------------------------------------------------------------------


def _run_command(*args: str, devices: int) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "cwcl_jax.frozen_cache", f"--config={DEMO}:tiny", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_command_builds_the_same_cache_on_one_and_on_two_processes(tmp_path, data_dir):
    """Two processes with one device each write one shard each; the content (hashed in
    index order) equals a one-process build on two devices (same per-device batches)."""
    common = [f"--config.data.data_dir={data_dir}", "--config.frozen_cache.chunk_steps=3"]
    single = _run_command(f"--cache_dir={tmp_path / 'one'}", "--distributed=off", *common,
                          devices=2)  # fmt: skip
    output, _ = single.communicate(timeout=600)
    assert single.returncode == 0, output
    assert "256 of 256 examples, dim 384 float32" in output
    port = _free_port()
    procs = [
        _run_command(
            f"--cache_dir={tmp_path / 'two'}",
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            *common,
            devices=1,
        )  # fmt: skip
        for i in range(2)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output
    one = json.loads((tmp_path / "one" / "manifest.json").read_text())
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert [s["rows"] for s in two["shards"]] == [128, 128]
    assert two["content_sha256"] == one["content_sha256"]
