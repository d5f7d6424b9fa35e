"""benchmarks/compare_losses.py: commands, aggregation and the report, on fabricated run
outputs (fast); one real tiny run end to end (slow)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "compare_losses.py"
_spec = importlib.util.spec_from_file_location("compare_losses", SCRIPT)
compare = importlib.util.module_from_spec(_spec)
sys.modules["compare_losses"] = compare  # dataclasses look their module up by name
_spec.loader.exec_module(compare)

# Fabricated per-seed results: (shape top1, color top1, image->text R@1, text->image R@1).
FAKE = {
    "cl": [(0.50, 0.30, 0.10, 0.12), (0.54, 0.34, 0.14, 0.16)],
    "cwcl": [(0.60, 0.40, 0.20, 0.22), (0.70, 0.42, 0.22, 0.20)],
}


def _eval_results(shape, color, i2t, t2i) -> dict:
    zeroshot = {"kind": "zeroshot", "top5": 1.0, "per_class_accuracy": [0.5], "template_spread": {}}
    recalls = lambda r1: {"R@1": r1, "R@5": 0.9, "R@10": 1.0}  # noqa: E731
    return {
        "step": 30,
        "tasks": {
            "shape": {**zeroshot, "top1": shape},
            "color": {**zeroshot, "top1": color},
            "caption": {"kind": "retrieval", "image_to_text": recalls(i2t),
                        "text_to_image": recalls(t2i), "num_queries": 128},
        },
    }  # fmt: skip


def _fabricate(root: Path, variant: str, seed: int, values, entropy: tuple[float, float]) -> None:
    run = compare.Run("image_text", variant, seed, 30)
    workdir = run.workdir(root)
    workdir.mkdir(parents=True)
    (workdir / "eval_results.json").write_text(json.dumps(_eval_results(*values)))
    records = [
        {"step": 10, "loss": 3.0, "target_entropy": entropy[0], "effective_positives": 2.0},
        {"step": 20, "loss": 2.0, "target_entropy": entropy[1], "effective_positives": 4.0},
    ]
    (workdir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    towers = {"frozen": {"path": "/x/model"}, "trainable": {"arch": "tiny_vit"}}
    config = {"batch_size": 128, "data": {"name": "cwcl_shapes"}, "model": towers}
    (workdir / "config.json").write_text(json.dumps(config))
    (workdir / "wall_seconds.json").write_text(json.dumps({"seconds": 100.0 + seed}))


@pytest.fixture
def fabricated(tmp_path):
    root = tmp_path / "runs"
    for variant, per_seed in FAKE.items():
        for seed, values in enumerate(per_seed):
            entropy = (0.0, 0.0) if variant == "cl" else (1.0, 2.0 + seed)
            _fabricate(root, variant, seed, values, entropy)
    return root


def test_main_command_sets_budget_variant_and_seed(tmp_path):
    run = compare.Run("speech_text", "cwcl_shuffled", 2, 40)
    command = compare.main_command(run, tmp_path / "w", "tiny", "/data")
    assert command[1:3] == ["-m", "cwcl_jax.main"]
    assert command[3] == f"--config={REPO / 'configs/demo_speech.py'}:tiny"
    for flag in ("--config.loss.name=cwcl", "--config.loss.weight_kind=shuffled",
                 "--config.seed=2", "--config.total_steps=40", "--config.eval_every_steps=40",
                 "--config.loss.shuffle_seed=2", "--config.data.data_dir=/data"):  # fmt: skip
        assert flag in command, flag
    cl = compare.main_command(compare.Run("image_text", "cl", 0, 5), tmp_path, "", None)
    assert not any("weight_kind" in f or "data_dir" in f for f in cl)
    assert run.workdir(tmp_path) == tmp_path / "speech_text/steps40/cwcl_shuffled/seed2"


def test_collect_and_aggregate_match_numpy(fabricated):
    collected = {}
    for variant, per_seed in FAKE.items():
        for seed in range(len(per_seed)):
            run = compare.Run("image_text", variant, seed, 30)
            collected[run] = compare.collect(run.workdir(fabricated))
    one = collected[compare.Run("image_text", "cwcl", 1, 30)]
    assert one["metrics"] == {
        "shape top-1": 0.70,
        "color top-1": 0.42,
        "caption image->text R@1": 0.22,
        "caption text->image R@1": 0.20,
    }
    assert one["diagnostics"] == {"target_entropy": 2.0, "effective_positives": 3.0}
    table = compare.aggregate(collected)
    np.testing.assert_allclose(table["image_text"]["cl"]["shape top-1"], [0.50, 0.54])
    assert compare.mean_std([0.50, 0.54], 100.0) == "52.0 ± 2.8"  # std ddof=1: 0.0283
    assert compare.mean_std([0.5], 100.0) == "50.0"
    diff = compare.paired_difference(table["image_text"], "cwcl", "cl")
    np.testing.assert_allclose(diff["shape top-1"], [0.10, 0.16])


def test_report_tables_differences_plot_and_kept_discussion(fabricated, tmp_path):
    out = tmp_path / "docs"
    out.mkdir()
    (out / "results.md").write_text("# old\nstale table\n## Discussion\nWhy: the weights.\n")
    collected = {}
    for variant, per_seed in FAKE.items():
        for seed in range(len(per_seed)):
            run = compare.Run("image_text", variant, seed, 30)
            collected[run] = compare.collect(run.workdir(fabricated))
    report = compare.write_report(collected, fabricated, out, "python benchmarks/x.py --steps 30")
    text = report.read_text()
    header = "| variant | seeds | caption image->text R@1 | caption text->image R@1 | color top-1 |"
    assert header in text
    assert "| cl | 2 | 12.0 ± 2.8 | 14.0 ± 2.8 | 32.0 ± 2.8 | 52.0 ± 2.8 |" in text
    assert "| cwcl | 2 | 21.0 ± 1.4 | 21.0 ± 1.4 | 41.0 ± 1.4 | 65.0 ± 7.1 |" in text
    assert "| cwcl | 1.750 ± 0.354 | 3.000 ± 0.000 |" in text  # entropy means 1.5, 2.0
    assert "image_text, cwcl - cl: caption image->text R@1: 9.0 ± 1.4" in text
    assert "shape top-1: 13.0 ± 4.2" in text
    assert "`cwcl_shapes`, 30 steps x batch 128 (3840 pairs), frozen `x/model`" in text
    assert "100 s per run here" in text  # mean of 100, 101, 100, 101 s, rounded half-even
    assert "python benchmarks/x.py --steps 30" in text
    assert "stale table" not in text and text.endswith("## Discussion\nWhy: the weights.\n")
    png = out / "results_image_text.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![results_image_text](results_image_text.png)" in text


def test_identity_check_reports_the_largest_gap(fabricated):
    table = {"image_text": {"cl": {"shape top-1": [0.5, 0.6]},
                            "cwcl_identity": {"shape top-1": [0.5, 0.61]}}}  # fmt: skip
    lines = compare.comparison_section(table)
    assert not any("No pairs" in line for line in lines)
    assert any("largest |cwcl_identity - cl|" in line and "1.00 points" in line for line in lines)


def test_no_pairs_is_said():
    lines = compare.comparison_section({"image_text": {"cwcl": {"shape top-1": [0.5]}}})
    assert lines[2].startswith("No pairs: needs `cl`")


def test_reuses_finished_runs_without_running(fabricated, capsys):
    run = compare.Run("image_text", "cl", 0, 30)
    assert compare.train_and_evaluate(run, fabricated, "", None) == run.workdir(fabricated)
    assert "reuse" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, expected",
    [("40", {"image_text": 40, "speech_text": 40}),
     ("speech_text=200", {"speech_text": 200}),
     ("image_text=120,speech_text=60", {"image_text": 120, "speech_text": 60})],
)  # fmt: skip
def test_steps_per_dataset(text, expected):
    assert compare.parse_args(["--steps", text]).steps == expected
    assert compare.parse_args([]).steps == {}


def test_bad_steps_name_the_dataset(capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(["--steps", "audio=5"])
    assert "'audio': choose from ['image_text', 'speech_text']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.parse_args(["--steps", "speech_text=0"])
    assert "speech_text=0: steps must be >= 1" in capsys.readouterr().err


def test_bad_inputs_are_named(tmp_path, fabricated):
    with pytest.raises(SystemExit):
        compare.parse_args(["--variants", "cl,clip"])
    for steps in ("0", "image_text=0", "audio=5", "speech_text=x"):
        with pytest.raises(SystemExit):
            compare.parse_args(["--steps", steps])
    args = compare.parse_args(["--seeds", "3,4", "--datasets", "speech_text"])
    assert args.seeds == [3, 4] and args.datasets == ["speech_text"]
    broken = compare.Run("image_text", "cl", 0, 30).workdir(fabricated)
    (broken / "eval_results.json").write_text(json.dumps({"step": 3}))
    with pytest.raises(ValueError, match=r"eval_results.json: not an eval_results.json"):
        compare.collect(broken)
    (broken / "eval_results.json").write_text(json.dumps(_eval_results(0.1, 0.1, 0.1, 0.1)))
    (broken / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}))
    with pytest.raises(ValueError, match=r"metrics.jsonl: no \['target_entropy'"):
        compare.collect(broken)


@pytest.mark.slow
def test_end_to_end_tiny_run(tmp_path):
    report = compare.main(
        ["--datasets", "image_text", "--variants", "cwcl", "--seeds", "0", "--steps", "3",
         "--config_arg", "tiny", "--workroot", str(tmp_path / "runs"),
         "--out_dir", str(tmp_path / "docs"), "--data_dir", str(tmp_path / "tfds")]
    )  # fmt: skip
    text = report.read_text()
    assert "| cwcl | 1 |" in text and "shape top-1" in text and "caption image->text R@1" in text
    assert "3 steps x batch 16 (48 pairs)" in text
    assert (tmp_path / "docs" / "results_image_text.png").stat().st_size > 0
    workdir = tmp_path / "runs/image_text/steps3/cwcl/seed0"
    assert json.loads((workdir / "eval_results.json").read_text())["step"] == 3
