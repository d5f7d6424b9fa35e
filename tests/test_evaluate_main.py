"""`--mode=eval` from a checkpoint equals the evaluation at the end of training (demo:tiny)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_main(workdir: Path, data_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    devices = "--xla_force_host_platform_device_count=2"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": devices}
    command = [
        sys.executable,
        "-m",
        "cwcl_jax.main",
        "--config",
        str(ROOT / "configs/demo.py:tiny"),
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={data_dir}",
        *flags,
    ]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_eval_from_checkpoint_equals_eval_at_end_of_training(tmp_path):
    workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
    trained = run_main(workdir, data_dir, "--config.eval_every_steps=3")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Evaluation at step 6" in trained.stdout and "shape    top1" in trained.stdout
    at_end = json.loads((workdir / "eval_results.json").read_text())
    assert at_end["step"] == 6
    (workdir / "eval_results.json").unlink()

    evaluated = run_main(workdir, data_dir, "--mode=eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((workdir / "eval_results.json").read_text()) == at_end
    for plot in ("shape_per_class", "shape_confusion", "color_confusion", "training_curves"):
        assert (workdir / "plots" / f"{plot}.png").stat().st_size > 0
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/shape/top1" in r] == [3, 6]


@pytest.mark.slow
def test_eval_mode_without_checkpoints_names_the_path(tmp_path):
    result = run_main(tmp_path / "empty", tmp_path / "tfds", "--mode=eval")
    assert result.returncode != 0
    assert f"no checkpoint directory {tmp_path / 'empty' / 'checkpoints'}" in result.stderr
