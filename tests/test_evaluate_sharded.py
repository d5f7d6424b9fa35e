"""Evaluation on sharded, padded global batches equals evaluation of the unpadded numpy data.

In-process: 8 simulated CPU devices (conftest). Slow: two CPU processes joined by
jax.distributed, each holding half of every global batch (the multi-host path of
`process_allgather`), first with fixed embeddings, then with a real TwoTower whose params
are sharded over both processes. Run as a script, this file is that worker.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DIM, NUM_CLASSES, NUM_EXAMPLES, BATCH = 6, 4, 21, 8
CLASS_NAMES = ("circle", "square", "star", "cross")
TEMPLATES = ("a {}.", "a photo of a {}.")


def make_data(seed: int = 0) -> dict[str, np.ndarray]:
    """Unpadded eval set: image features near their class axis, text = noisy image."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, NUM_EXAMPLES).astype(np.int32)
    image = np.eye(DIM, dtype=np.float32)[labels] + 0.6 * rng.standard_normal((NUM_EXAMPLES, DIM))
    text = image + 0.8 * rng.standard_normal((NUM_EXAMPLES, DIM))
    return {"image": image.astype(np.float32), "text": text.astype(np.float32), "labels": labels}


def padded_batches(data: dict[str, np.ndarray]) -> list[dict]:
    """Host batches of BATCH rows; the last is padded with garbage rows marked invalid."""
    batches = []
    for start in range(0, NUM_EXAMPLES, BATCH):
        rows = slice(start, start + BATCH)
        real = len(data["labels"][rows])
        pad = BATCH - real

        def padded(x, pad=pad):
            # Garbage that would change every metric if padding were not dropped.
            return np.concatenate([x, np.full((pad, *x.shape[1:]), 7, x.dtype)])

        batches.append(
            {
                "image": {"x": padded(data["image"][rows])},
                "text": {"x": padded(data["text"][rows])},
                "labels": {"shape": padded(data["labels"][rows] % NUM_CLASSES)},
                "valid": np.arange(BATCH) < real,
            }
        )
    return batches


def embed_texts(texts: list[str]) -> np.ndarray:
    """Prompt -> its class axis plus a small template-dependent offset."""
    out = []
    for text in texts:
        (c,) = [i for i, name in enumerate(CLASS_NAMES) if name in text]
        t = [i for i, tpl in enumerate(TEMPLATES) if tpl.format(CLASS_NAMES[c]) == text][0]
        out.append(np.eye(DIM)[c] + 0.3 * np.eye(DIM)[DIM - 1 - t])
    return np.stack(out)


def embed_batch_fn():
    import jax
    import jax.numpy as jnp

    @jax.jit
    def embed_batch(batch):
        def unit(x):
            return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

        return {"image": unit(batch["image"]["x"]), "text": unit(batch["text"]["x"])}

    return embed_batch


def eval_config(files_dir: Path):
    """A zero-shot task with class names and templates from files, and a retrieval task."""
    from cwcl_jax import evaluate

    names, templates = files_dir / "names.json", files_dir / "templates.json"
    names.write_text(json.dumps(CLASS_NAMES))
    templates.write_text(json.dumps(TEMPLATES))
    config = evaluate.get_eval_config()
    config.tasks.shape = evaluate.zeroshot_task(
        "shape", "image", templates=str(templates), class_names=str(names)
    )
    config.tasks.caption = evaluate.retrieval_task("image", "text", ks=(1, 5))
    return config


def run_evaluator(batches, files_dir: Path) -> dict:
    from cwcl_jax import evaluate

    evaluator = evaluate.Evaluator(eval_config(files_dir), modalities=("image", "text"))
    return evaluator(batches, embed_batch=embed_batch_fn(), embed_texts=embed_texts)


def unsharded_reference(data) -> dict:
    """The same metrics computed directly on the unpadded numpy data."""
    from cwcl_jax.eval import retrieval, zeroshot

    prompts = zeroshot.embed_prompts(CLASS_NAMES, TEMPLATES, embed_texts)
    shape = zeroshot.zeroshot_metrics(
        data["image"],
        data["labels"],
        prompts,
        class_names=CLASS_NAMES,
        templates=TEMPLATES,
        task="shape",
    )
    caption = retrieval.retrieval_metrics(
        data["image"], data["text"], ks=(1, 5), query_name="image", gallery_name="text"
    )
    return {
        "tasks": {
            "shape": {"kind": "zeroshot", "query_modality": "image", **shape},
            "caption": {"kind": "retrieval", **caption},
        }
    }


def assert_results_close(actual: dict, expected: dict) -> None:
    assert json.dumps(actual, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_sharded_padded_eval_matches_unsharded_numpy(tmp_path):
    import jax

    from cwcl_jax import sharding

    assert jax.device_count() == 8
    mesh = sharding.create_mesh({"data": -1})
    data = make_data()
    global_batches = [
        jax.device_put(b, sharding.batch_sharding(mesh)) for b in padded_batches(data)
    ]
    assert len(global_batches[0]["image"]["x"].sharding.device_set) == 8
    results = run_evaluator(global_batches, tmp_path)
    assert_results_close(results, unsharded_reference(data))
    # An independent check of the headline numbers with plain numpy.
    shape = results["tasks"]["shape"]
    assert shape["num_examples"] == NUM_EXAMPLES
    prompts = embed_texts([t.format(c) for c in CLASS_NAMES for t in TEMPLATES])
    prompts = (prompts / np.linalg.norm(prompts, axis=1, keepdims=True)).reshape(4, 2, DIM)
    classes = prompts.mean(1) / np.linalg.norm(prompts.mean(1), axis=1, keepdims=True)
    predictions = np.argmax(data["image"] @ classes.T, axis=1)
    assert shape["top1"] == pytest.approx(np.mean(predictions == data["labels"]))
    assert 0.3 < shape["top1"] < 1.0  # neither trivial nor hopeless: the comparison bites


def test_item_ids_dedupe_the_gallery(tmp_path):
    from cwcl_jax import evaluate

    # Four (image, caption) rows of two images: image rows repeat per caption.
    images = np.array([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]], np.float32)
    captions = np.array([[1.0, 0.1], [0.2, 1.0], [0.1, 1.0], [0, 1.0]], np.float32)
    batch = {
        "image": {"x": images},
        "text": {"x": captions},
        "labels": {"image_id": np.array([10, 10, 11, 11])},
        "valid": np.ones(4, bool),
    }
    config = evaluate.get_eval_config()
    config.tasks.ret = evaluate.retrieval_task("text", "image", item_id_key="image_id", ks=(1,))
    out = evaluate.Evaluator(config)([batch], embed_batch=embed_batch_fn(), embed_texts=None)
    assert out["tasks"]["ret"] == {
        "kind": "retrieval",
        "text_to_image": {"R@1": 0.75},
        "image_to_text": {"R@1": 1.0},
        "num_queries": 4,
        "num_gallery": 2,
    }


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b.update(valid=np.ones(3, bool)), r"'valid' has shape \(3,\), expected \(8,\)"),
        (lambda b: b["labels"].pop("shape"), r"eval batch labels \[\] lack \['shape'\]"),
    ],
)
def test_bad_eval_batches(tmp_path, mutate, match):
    batch = padded_batches(make_data())[0]
    mutate(batch)
    with pytest.raises(ValueError, match=match):
        run_evaluator([batch], tmp_path)


def test_missing_modality_and_empty_iterator(tmp_path):
    from cwcl_jax import evaluate
    from cwcl_jax.eval import gather

    with pytest.raises(ValueError, match="eval iterator yielded no batches"):
        run_evaluator([], tmp_path)
    tasks = evaluate.Evaluator(eval_config(tmp_path)).tasks
    with pytest.raises(ValueError, match=r"embed_batch returned \['image'\], but the eval"):
        evaluate.evaluate(
            tasks,
            padded_batches(make_data())[:1],
            embed_batch=lambda b: {"image": b["image"]["x"]},
            embed_texts=embed_texts,
        )
    with pytest.raises(ValueError, match=r"leading sizes"):
        gather.collect(lambda b: {"a": np.ones((2, 1)), "b": np.ones((3, 1))}, [{}])


# --- two processes ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_eval_matches_unsharded_numpy(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    }
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, str(pid), str(port), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pid in range(2)
    ]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    for worker, log in zip(workers, logs, strict=True):
        assert worker.returncode == 0, log
    # Every process computed the same results; only process 0 wrote the report.
    per_process = [json.loads((tmp_path / f"results_{pid}.json").read_text()) for pid in range(2)]
    assert per_process[0] == per_process[1]
    assert_results_close(per_process[0], unsharded_reference(make_data()))
    written = json.loads((tmp_path / "report" / "eval_results.json").read_text())
    assert written["step"] == 3
    assert not (tmp_path / "report_1").exists()
    # A real TwoTower with params sharded over both processes and prompts embedded by jit.
    two_tower = [json.loads((tmp_path / f"two_tower_{pid}.json").read_text()) for pid in range(2)]
    assert two_tower[0] == two_tower[1]
    assert two_tower[0] == two_tower_eval(two_tower_batches(), tmp_path / "files_ref")


def two_tower_batches() -> list[dict]:
    import test_evaluate_two_tower as tt

    return [tt.make_batch(seed) for seed in (1, 2)]


def two_tower_eval(batches: list[dict], files_dir: Path, place=lambda tree: tree) -> dict:
    """Zero-shot and retrieval with the tiny frozen-text TwoTower of the two-tower tests."""
    import test_evaluate_two_tower as tt

    from cwcl_jax import evaluate
    from cwcl_jax.eval.two_tower_embed import two_tower_embedders

    model, variables, frozen_module, frozen_params, _ = tt.build(text_is_frozen=True)
    embed_batch, embed_texts = two_tower_embedders(
        model, place(variables), frozen_module, place(frozen_params),
        trainable_modality="image", frozen_modality="text", tokenize=tt.tokenize,
    )  # fmt: skip
    config = tt.shape_and_caption_tasks(files_dir)
    evaluator = evaluate.Evaluator(config, modalities=("image", "text"))
    return evaluator(batches, embed_batch=embed_batch, embed_texts=embed_texts)


def _worker(process_id: int, port: int, out_dir: Path) -> None:
    import jax

    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    from cwcl_jax import evaluate, sharding

    mesh = sharding.create_mesh({"data": -1})
    spec = sharding.batch_sharding(mesh)
    half = slice(process_id * BATCH // 2, (process_id + 1) * BATCH // 2)
    global_batches = [
        jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(spec, x[half], x.shape), batch
        )
        for batch in padded_batches(make_data())
    ]
    assert not global_batches[0]["image"]["x"].is_fully_addressable
    results = run_evaluator(global_batches, out_dir / f"files_{process_id}")
    (out_dir / f"results_{process_id}.json").write_text(json.dumps(results))
    report = out_dir / ("report" if process_id == 0 else "report_1")
    evaluate.save_report(results, report, step=3)

    def place(tree):
        """Params sharded over both processes: the last axis over "data" where 8 divides it."""
        mesh_spec = jax.sharding.PartitionSpec

        def put(x):
            x = np.asarray(x)
            split = x.ndim > 0 and x.shape[-1] % 8 == 0
            spec = mesh_spec(*[None] * (x.ndim - 1), "data") if split else mesh_spec()
            sharding_ = jax.sharding.NamedSharding(mesh, spec)
            return jax.make_array_from_callback(x.shape, sharding_, lambda index: x[index])

        return jax.tree.map(put, tree)

    local = two_tower_batches()
    tt_batches = [
        jax.tree.map(lambda x: jax.make_array_from_process_local_data(spec, x[half], x.shape), b)
        for b in local
    ]
    two_tower = two_tower_eval(tt_batches, out_dir / f"files_tt_{process_id}", place)
    (out_dir / f"two_tower_{process_id}.json").write_text(json.dumps(two_tower))


if __name__ == "__main__":
    out = Path(sys.argv[3])
    (out / f"files_{sys.argv[1]}").mkdir(parents=True, exist_ok=True)
    _worker(int(sys.argv[1]), int(sys.argv[2]), out)
