"""ExperimentEvaluator end to end: demo:tiny config, real MiniLM frozen tower, cwcl_shapes."""

from pathlib import Path

import pytest

from cwcl_jax import evaluate, experiment
from cwcl_jax.config_utils import load_sibling

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.py"


def demo_config(data_dir: Path):
    config = load_sibling(str(DEMO), "demo").get_config("tiny")
    config.data.data_dir = str(data_dir)
    config.eval = evaluate.get_eval_config()
    config.eval.batch_size = 48  # 128 test examples: the last batch is padded
    config.eval.tasks.shape = evaluate.zeroshot_task("shape", "image", templates="shapes")
    config.eval.tasks.color = evaluate.zeroshot_task("color", "image", templates="colors")
    config.eval.tasks.caption = evaluate.retrieval_task("image", "text")
    return config


@pytest.mark.slow
def test_experiment_evaluator_writes_report(tmp_path):
    config = demo_config(tmp_path / "tfds")
    exp, frozen_params, _ = experiment.build_experiment(config, with_weights=True)
    evaluator = evaluate.ExperimentEvaluator(exp)
    state = experiment.init_state(exp)
    results = evaluator(state.params, frozen_params, step=0, workdir=tmp_path / "run")

    shape, color = results["tasks"]["shape"], results["tasks"]["color"]
    assert shape["num_examples"] == 128 and shape["num_classes"] == 8
    assert color["num_classes"] == 10 and color["num_templates"] == 7
    assert sum(map(sum, shape["confusion_matrix"])) == 128
    assert results["tasks"]["caption"]["num_queries"] == 128
    run = tmp_path / "run"
    for name in ("eval_results.json", "plots/shape_confusion.png", "plots/color_per_class.png"):
        assert (run / name).stat().st_size > 0
    # Same params, same numbers: evaluation is deterministic (no shuffling, no dropout).
    assert evaluator(state.params, frozen_params, step=0) == results


def test_bad_eval_config_fails_before_any_batch(tmp_path):
    config = demo_config(tmp_path / "tfds")
    config.eval.tasks.shape.label_key = "hue"
    exp, _, _ = experiment.build_experiment(config, with_weights=False)
    with pytest.raises(ValueError, match="config.eval.tasks.shape.class_names: .*no feature 'hue'"):
        evaluate.ExperimentEvaluator(exp)
