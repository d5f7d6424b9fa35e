"""Eval data files, task configs, results JSON and plots: formats and every error path."""

import json

import numpy as np
import pytest

from cwcl_jax import evaluate
from cwcl_jax.eval import class_names, plots, results, tasks, templates

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# --- template sets ---------------------------------------------------------------------


def test_shipped_template_sets_load_and_are_valid():
    names = templates.available_template_sets()
    assert {
        "imagenet_80",
        "imagenet_7",
        "simple_image",
        "shapes",
        "colors",
        "intent",
        "keyword",
    } <= set(names)
    for name in names:
        loaded = templates.load_templates(name)
        assert loaded and all(t.count("{}") == 1 for t in loaded)
    imagenet = templates.load_templates("imagenet_80")
    assert len(imagenet) == 80 and imagenet[0] == "a bad photo of a {}."
    assert set(templates.load_templates("imagenet_7")) <= set(imagenet)


def test_template_file_json_and_lines(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(["a {}.", "the {}"]))
    (tmp_path / "t.txt").write_text("a {}.\n\nthe {}\n")
    assert templates.load_templates(str(tmp_path / "t.json")) == ("a {}.", "the {}")
    assert templates.load_templates(str(tmp_path / "t.txt")) == ("a {}.", "the {}")


@pytest.mark.parametrize(
    ("filename", "content", "match"),
    [
        ("bad.json", '["a {}", ', "bad.json: not valid JSON"),
        ("bad.json", '{"a": "{}"}', "bad.json: expected a JSON list of template strings"),
        ("bad.json", "[]", "bad.json: no templates"),
        ("bad.txt", "a photo\n", r"bad.txt: template 0 \('a photo'\) must contain exactly one"),
        ("bad.txt", "a {} {}\n", "template 0 .* exactly one"),
        ("bad.txt", "a {0}\n", "template 0 .* exactly one"),
        ("bad.txt", "a {}\nb {}\na {}\n", "template 'a {}' appears more than once"),
    ],
)
def test_bad_template_files_name_path_and_problem(tmp_path, filename, content, match):
    (tmp_path / filename).write_text(content)
    with pytest.raises(ValueError, match=match):
        templates.load_templates(str(tmp_path / filename))


def test_unknown_template_set_lists_shipped_ones():
    with pytest.raises(ValueError, match="'imagenet_81' is neither a shipped set .*imagenet_80"):
        templates.load_templates("imagenet_81")


# --- class-name files ------------------------------------------------------------------


def test_class_name_files(tmp_path):
    (tmp_path / "c.txt").write_text("tabby cat\n golden retriever \n")
    (tmp_path / "c.json").write_text('["tabby cat", "golden retriever"]')
    expected = ("tabby cat", "golden retriever")
    assert class_names.load_class_names(tmp_path / "c.txt") == expected
    assert class_names.load_class_names(tmp_path / "c.json") == expected


@pytest.mark.parametrize(
    ("filename", "content", "match"),
    [
        ("c.json", "cat\ndog\n", "c.json: not valid JSON"),
        ("c.json", '{"0": "cat"}', "c.json: expected a JSON list of non-empty strings"),
        ("c.json", '["cat", 3]', "expected a JSON list of non-empty strings"),
        ("c.json", '["cat", " "]', "expected a JSON list of non-empty strings"),
        ("c.txt", "", "c.txt: no class names"),
        ("c.txt", "cat\n\ndog\n", "c.txt: line 2 is blank"),
        ("c.txt", '["cat", "dog"]', "c.txt: looks like JSON"),
        ("c.txt", "cat\ndog\ncat\n", "c.txt: 'cat' \\(entry 2\\) appears twice"),
    ],
)
def test_bad_class_name_files_name_path_and_problem(tmp_path, filename, content, match):
    (tmp_path / filename).write_text(content)
    with pytest.raises(ValueError, match=match):
        class_names.load_class_names(tmp_path / filename)


def test_missing_class_name_file(tmp_path):
    with pytest.raises(ValueError, match=f"class-name file {tmp_path}/nope.txt does not exist"):
        class_names.load_class_names(tmp_path / "nope.txt")


# --- task configs ----------------------------------------------------------------------


def eval_tasks(**named):
    config = evaluate.get_eval_config()
    for name, task in named.items():
        config.tasks[name] = task
    return config.tasks


def test_resolve_tasks_loads_files(tmp_path):
    (tmp_path / "names.txt").write_text("up\ndown\n")
    resolved = tasks.resolve_tasks(
        eval_tasks(
            kw=evaluate.zeroshot_task(
                "keyword", "speech", templates="keyword", class_names=str(tmp_path / "names.txt")
            ),
            ret=evaluate.retrieval_task("speech", "text", item_id_key="utt"),
        ),
        modalities=("speech", "text"),
    )
    kw, ret = resolved
    assert kw == tasks.ZeroShotTask(
        name="kw",
        label_key="keyword",
        query_modality="speech",
        class_names=("up", "down"),
        templates=templates.load_templates("keyword"),
        ks=(1, 5),
        per_template=True,
    )
    assert ret == tasks.RetrievalTask("ret", "speech", "text", "utt", (1, 5, 10))


def test_class_names_from_tfds_classlabel(tmp_path):
    from cwcl_jax.data import shapes

    info = shapes.CwclShapes(config="tiny", data_dir=str(tmp_path)).info
    (shape_task,) = tasks.resolve_tasks(
        eval_tasks(shape=evaluate.zeroshot_task("shape", "image", templates="shapes")),
        dataset_info=info,
    )
    assert shape_task.class_names == shapes.SHAPES
    with pytest.raises(ValueError, match="config.eval.tasks.x.class_names: .*no feature 'hue'"):
        tasks.resolve_tasks(eval_tasks(x=evaluate.zeroshot_task("hue", "image")), dataset_info=info)


@pytest.mark.parametrize(
    ("task", "match"),
    [
        ({"kind": "zeroshoot"}, r"config.eval.tasks.t.kind is 'zeroshoot'; expected one of"),
        (evaluate.zeroshot_task("", "image", class_names="x.txt"), "t.label_key is required"),
        (evaluate.zeroshot_task("y", "video"), r"t.query_modality is 'video'; the eval data has"),
        (evaluate.zeroshot_task("y", "image", ks=(1, 0)), "t.ks must be a non-empty tuple"),
        (evaluate.retrieval_task("image", "speech"), "t.gallery_modality is 'speech'"),
        (evaluate.zeroshot_task("y", "image"), "t.class_names: .*needs the eval dataset's"),
        (
            evaluate.zeroshot_task("y", "image", class_names="/no/such.txt"),
            "t.class_names: class-name file /no/such.txt does not exist",
        ),
    ],
)
def test_bad_task_config_names_the_field(task, match):
    with pytest.raises(ValueError, match=match):
        tasks.resolve_tasks(eval_tasks(t=task), modalities=("image", "text"))


def test_zeroshot_without_text_tower_is_an_error():
    task = evaluate.zeroshot_task("intent", "speech", class_names="x.txt")
    with pytest.raises(ValueError, match="t: zero-shot prompts need a text tower"):
        tasks.resolve_tasks(eval_tasks(t=task), modalities=("speech", "image"))
    with pytest.raises(ValueError, match="zero-shot tasks need embed_texts"):
        evaluate.evaluate(
            [tasks.ZeroShotTask("t", "y", "image", ("a",), ("{}",))],
            [],
            embed_batch=dict,
            embed_texts=None,
        )


def test_bad_template_in_task_names_the_field(tmp_path):
    (tmp_path / "names.txt").write_text("a\nb\n")
    task = evaluate.zeroshot_task(
        "y", "image", templates="missing_set", class_names=str(tmp_path / "names.txt")
    )
    with pytest.raises(ValueError, match="config.eval.tasks.t.templates: template set"):
        tasks.resolve_tasks(eval_tasks(t=task))


def test_no_tasks_is_an_error():
    with pytest.raises(ValueError, match="config.eval.tasks is empty"):
        tasks.resolve_tasks(evaluate.get_eval_config().tasks)


# --- results and plots -----------------------------------------------------------------


def zeroshot_result(num_classes=3):
    names = [f"class_{i}" for i in range(num_classes)]
    confusion = np.diag(np.arange(1, num_classes + 1))
    confusion[0, 1] = 1
    return {
        "kind": "zeroshot",
        "top1": 0.75,
        "top5": 1.0,
        "mean_per_class_accuracy": 0.8,
        "class_names": names,
        "per_class_accuracy": {
            n: (None if i == 2 else 0.5 + 0.1 * (i % 5)) for i, n in enumerate(names)
        },
        "confusion_matrix": confusion.tolist(),
        "per_template_accuracy": {"a {}": 0.7, "the {}": 0.8},
        "template_spread": {
            "mean": 0.75,
            "std": 0.05,
            "min": 0.7,
            "max": 0.8,
            "best_template": "the {}",
            "worst_template": "a {}",
        },
    }


RESULTS = {
    "tasks": {
        "shape": zeroshot_result(),
        "caption": {
            "kind": "retrieval",
            "image_to_text": {"R@1": 0.5},
            "text_to_image": {"R@1": 0.25},
            "num_queries": 4,
            "num_gallery": 4,
        },
    }
}


def test_scalars_flatten_summaries_only():
    assert results.scalars(RESULTS) == {
        "eval/shape/top1": 0.75,
        "eval/shape/top5": 1.0,
        "eval/shape/mean_per_class_accuracy": 0.8,
        "eval/shape/template_spread/mean": 0.75,
        "eval/shape/template_spread/std": 0.05,
        "eval/shape/template_spread/min": 0.7,
        "eval/shape/template_spread/max": 0.8,
        "eval/caption/image_to_text/R@1": 0.5,
        "eval/caption/text_to_image/R@1": 0.25,
        "eval/caption/num_queries": 4.0,
        "eval/caption/num_gallery": 4.0,
    }


def test_summary_table_lists_headline_metrics():
    assert results.summary_table(RESULTS).splitlines() == [
        "task     metric                value",
        "shape    top1                  0.7500",
        "shape    mean per-class acc    0.8000",
        "shape    template acc min/max  0.7000/0.8000",
        "caption  image_to_text R@1     0.5000",
        "caption  text_to_image R@1     0.2500",
    ]


def test_write_json_round_trips_and_rejects_nan(tmp_path):
    path = results.write_json(tmp_path / "sub" / "eval_results.json", RESULTS)
    assert json.loads(path.read_text()) == RESULTS
    with pytest.raises(ValueError, match="Out of range float"):
        results.write_json(tmp_path / "nan.json", {"x": float("nan")})


@pytest.mark.parametrize("num_classes", [3, 70])  # labeled plots, and the many-class form
def test_task_plots_are_png(tmp_path, num_classes):
    task = zeroshot_result(num_classes)
    for path in (
        plots.plot_per_class_accuracy(task, tmp_path / "a" / "per_class.png", "shape"),
        plots.plot_confusion_matrix(task, tmp_path / "confusion.png", "shape"),
    ):
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def test_training_curves_from_metrics_jsonl(tmp_path):
    lines = [
        {"step": s, "loss": 1.0 / s, "temperature": "nan" if s == 2 else 0.1} for s in (1, 2, 3)
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    series = plots.read_metrics_jsonl(tmp_path / "metrics.jsonl")
    assert series["loss"] == ([1, 2, 3], [1.0, 0.5, 1 / 3])
    assert np.isnan(series["temperature"][1][1])
    out = plots.plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert out.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"step": 1, "loss": 1}\n{"step": 2, "loss"\n', r"metrics.jsonl:2: not a JSON object"),
        ('{"loss": 1}\n', r"metrics.jsonl:1: expected a JSON object with an integer 'step'"),
        ('{"step": 1, "note": "x"}\n', "metrics.jsonl: no numeric metrics to plot"),
    ],
)
def test_bad_metrics_jsonl(tmp_path, content, match):
    (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(ValueError, match=match):
        plots.plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "c.png")
    with pytest.raises(ValueError, match="does not exist"):
        plots.read_metrics_jsonl(tmp_path / "missing.jsonl")


def test_save_report_writes_json_and_plots(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n')
    written = evaluate.save_report(RESULTS, tmp_path, step=7)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in written)
    assert names == [
        "eval_results.json",
        "plots/shape_confusion.png",
        "plots/shape_per_class.png",
        "plots/training_curves.png",
    ]
    assert json.loads((tmp_path / "eval_results.json").read_text()) == {"step": 7, **RESULTS}
