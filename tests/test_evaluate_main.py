"""`--mode=eval`: a checkpoint (latest or given) evaluated with the run's recorded config
equals the evaluation at the end of training; every error path names its file."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cwcl_jax import checkpointing, config_utils, main
from cwcl_jax.config_utils import load_sibling, to_json_dict

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.py")


def _tiny(data_dir: str):
    config = load_sibling(DEMO, "demo").get_config("tiny")
    config.data.data_dir = data_dir
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run: checkpoints at steps 2 and 4, evaluated at step 4 -> (workdir, results)."""
    root = tmp_path_factory.mktemp("eval_main")
    config = _tiny(str(root / "tfds"))
    config.total_steps, config.checkpoint_every_steps, config.eval_every_steps = 4, 2, 4
    workdir = root / "run"
    main.train(config, str(workdir))
    at_end = json.loads((workdir / "eval_results.json").read_text())
    assert at_end["step"] == 4
    return workdir, at_end


def _copy(workdir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    (copy / "eval_results.json").unlink()
    return copy


def test_eval_with_a_different_config_file_evaluates_the_recorded_run(trained, tmp_path):
    workdir, at_end = trained
    workdir = _copy(workdir, tmp_path)
    other = _tiny("/nonexistent/tfds")  # another model, loss and data dir than the run's
    other.model.trainable.overrides.hidden_size = 32
    other.loss.name = "siglip"
    del other.eval.tasks["caption"]  # the eval tasks do come from --config
    main.evaluate_checkpoint(other, str(workdir))
    evaluated = json.loads((workdir / "eval_results.json").read_text())
    assert evaluated["tasks"].keys() == {"shape", "color"}
    del at_end["tasks"]["caption"]
    assert evaluated == at_end


@pytest.mark.slow  # the CLI test covers --checkpoint_step; test_checkpointing read-only damage
def test_eval_of_a_given_step_and_read_only_damage(trained, tmp_path, capsys):
    workdir = _copy(trained[0], tmp_path)
    for data_file in (workdir / "checkpoints" / "4" / "state").rglob("d/*"):
        data_file.write_bytes(data_file.read_bytes()[::-1])
    before = sorted(os.listdir(workdir / "checkpoints"))
    damaged = re.escape(f"checkpoint {workdir / 'checkpoints' / '4'} is damaged")
    with pytest.raises(checkpointing.CheckpointError, match=damaged):
        main.evaluate_checkpoint(_tiny(""), str(workdir))  # latest = 4: no fallback to 2
    assert sorted(os.listdir(workdir / "checkpoints")) == before == ["2", "4"]
    main.evaluate_checkpoint(_tiny(""), str(workdir), step=2)
    assert json.loads((workdir / "eval_results.json").read_text())["step"] == 2
    assert "Evaluation at step 2" in capsys.readouterr().out


def test_eval_of_a_step_not_saved_lists_the_saved_ones(trained):
    listed = r"no checkpoint of step 3 in .*checkpoints; available steps: \[2, 4\]"
    with pytest.raises(checkpointing.CheckpointError, match=listed):
        main.evaluate_checkpoint(_tiny(""), str(trained[0]), step=3)


def _workdir_with_record(tmp_path: Path, **model_paths: str) -> Path:
    """A workdir holding only the config.json of a tiny run (and an empty checkpoints/)."""
    record = to_json_dict(_tiny(str(tmp_path / "tfds")))
    for side, path in model_paths.items():
        record["model"][side]["path"] = path
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(record))
    return workdir


def test_eval_errors_name_the_path(tmp_path):
    config = _tiny("")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'config.json'} not found")):
        main.evaluate_checkpoint(config, str(tmp_path))
    workdir = _workdir_with_record(tmp_path)
    with pytest.raises(checkpointing.CheckpointError, match=r"checkpoints holds no checkpoint"):
        main.evaluate_checkpoint(config, str(workdir))
    shutil.rmtree(workdir / "checkpoints")
    missing = re.escape(f"no checkpoint directory {workdir / 'checkpoints'}")
    with pytest.raises(checkpointing.CheckpointError, match=missing):
        main.evaluate_checkpoint(config, str(workdir))
    (workdir / "config.json").write_text("{truncated")
    with pytest.raises(ValueError, match="cannot read the run's config .*config.json"):
        main.evaluate_checkpoint(config, str(workdir))


def test_recorded_frozen_path_that_is_gone_is_named(tmp_path):
    workdir = _workdir_with_record(tmp_path, frozen="/models/minilm_moved_away")
    gone = r"records model\.frozen\.path=/models/minilm_moved_away, which is not a directory"
    with pytest.raises(ValueError, match=gone):
        main.evaluate_checkpoint(_tiny(""), str(workdir))
    # An explicit command-line override points at the new location.
    moved = {"model.frozen.path": _tiny("").model.frozen.path}
    run = config_utils.recorded_run_config(str(workdir), _tiny(""), moved)
    assert run.model.frozen.path == moved["model.frozen.path"]


def test_recorded_run_config_rules(tmp_path):
    """Record wins except `eval`; lists back to tuples; old records get new fields;
    command-line overrides last."""
    recorded = to_json_dict(_tiny("/recorded/tfds"))
    recorded["loss"]["name"] = "siglip"
    recorded["model"]["trainable"]["overrides"] = {"image_size": 32, "num_layers": 1}
    del recorded["frozen_cache"]  # a run recorded before that section existed
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    given = _tiny("/given/tfds")
    given.eval.batch_size = 24
    overrides = {"mesh.data": 2, "eval.batch_size": 24}
    run = config_utils.recorded_run_config(str(tmp_path), given, overrides)
    assert run.loss.name == "siglip" and run.data.data_dir == "/recorded/tfds"
    assert run.model.trainable.overrides.to_dict() == {"image_size": 32, "num_layers": 1}
    assert run.eval.batch_size == 24 and run.eval.tasks.keys() == given.eval.tasks.keys()
    assert run.frozen_cache.to_dict() == given.frozen_cache.to_dict()
    assert run.loss.cwcl_directions == ("trainable_to_frozen",)
    assert run.sharding.trainable == ((".*", "logical"),)
    assert run.mesh.data == 2
    with pytest.raises(AttributeError):  # locked like any config
        run.not_a_field = 1
    with pytest.raises(ValueError, match=r"--config\.loss\.no_such_field: not applicable"):
        config_utils.recorded_run_config(str(tmp_path), given, {"loss.no_such_field": 1})


def _run_main(workdir: Path, data_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    devices = "--xla_force_host_platform_device_count=2"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": devices}
    command = [
        sys.executable,
        "-m",
        "cwcl_jax.main",
        "--config",
        f"{DEMO}:tiny",
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={data_dir}",
        *flags,
    ]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_cli_eval_from_checkpoint_equals_eval_at_end_of_training(tmp_path):
    workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
    trained = _run_main(workdir, data_dir, "--config.eval_every_steps=3")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Evaluation at step 6" in trained.stdout and "shape    top1" in trained.stdout
    at_end = json.loads((workdir / "eval_results.json").read_text())
    assert at_end["step"] == 6
    (workdir / "eval_results.json").unlink()

    evaluated = _run_main(workdir, data_dir, "--mode=eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((workdir / "eval_results.json").read_text()) == at_end
    for plot in ("shape_per_class", "shape_confusion", "color_confusion", "training_curves"):
        assert (workdir / "plots" / f"{plot}.png").stat().st_size > 0
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/shape/top1" in r] == [3, 6]

    at_step_3 = _run_main(workdir, data_dir, "--mode=eval", "--checkpoint_step=3")
    assert at_step_3.returncode == 0, at_step_3.stderr[-3000:]
    assert json.loads((workdir / "eval_results.json").read_text())["step"] == 3
    unsaved = _run_main(workdir, data_dir, "--mode=eval", "--checkpoint_step=5")
    assert unsaved.returncode != 0 and "available steps: [3, 6]" in unsaved.stderr


@pytest.mark.slow
def test_cli_checkpoint_step_outside_eval_mode_and_missing_workdir(tmp_path):
    result = _run_main(tmp_path / "run", tmp_path / "tfds", "--checkpoint_step=3")
    assert result.returncode != 0 and "--checkpoint_step applies to --mode=eval only" in (
        result.stderr
    )
    result = _run_main(tmp_path / "empty", tmp_path / "tfds", "--mode=eval")
    assert result.returncode != 0
    assert f"{tmp_path / 'empty' / 'config.json'} not found" in result.stderr
