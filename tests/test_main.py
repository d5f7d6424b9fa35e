"""The entry point end to end on the tiny demo config: workdir contents, resume, flags,
SIGTERM and SIGKILL (exact resume), compile_check."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import cwcl_jax.data  # noqa: F401  (registers cwcl_shapes)
from cwcl_jax import checkpointing, experiment, main, metrics
from cwcl_jax.config_utils import load_sibling

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "configs" / "demo.py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data dir with cwcl_shapes/tiny prepared, so that runs started side by side in
    subprocesses never race to build it."""
    directory = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("cwcl_shapes/tiny", data_dir=directory).download_and_prepare()
    return directory


def _tiny(data_dir: str, **fields):
    config = load_sibling(DEMO, "demo").get_config("tiny")
    config.data.data_dir = data_dir
    for name, value in fields.items():
        config[name] = value
    return config


def _restore_params(workdir: str, config):
    exp, _, _ = experiment.build_experiment(config, with_weights=False)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    step, state, _ = ckpt.restore_latest(experiment.abstract_state(exp))
    ckpt.close()
    return step, jax.tree.map(np.asarray, state.params)


def test_train_writes_workdir(tmp_path, data_dir):
    workdir = str(tmp_path / "run")
    main.train(_tiny(data_dir, total_steps=4, checkpoint_every_steps=2), workdir)
    assert [r["step"] for r in _records(workdir)] == [2, 4]
    records = _records(workdir)
    for key in (
        "loss",
        "accuracy_t2f",
        "accuracy_f2t",
        "temperature",
        "grad_norm",
        "target_entropy",
        "effective_positives",
        "examples_per_sec",
        "step_time_sec",
    ):
        assert np.isfinite(records[-1][key]), key  # fmt: skip
    assert json.loads(Path(workdir, "config.json").read_text())["batch_size"] == 16
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert _tensorboard_scalars(events[0])["loss"] == [2, 4]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]


@pytest.mark.slow
def test_longer_run_resumes_and_appends(tmp_path, data_dir):
    workdir = str(tmp_path / "run")
    main.train(_tiny(data_dir, total_steps=4, checkpoint_every_steps=2), workdir)
    main.train(_tiny(data_dir, total_steps=6, checkpoint_every_steps=2), workdir)
    assert [r["step"] for r in _records(workdir)] == [2, 4, 6]


def _records(workdir: str) -> list[dict]:
    return [json.loads(line) for line in Path(workdir, "metrics.jsonl").read_text().splitlines()]


def _tensorboard_scalars(path: Path) -> dict[str, list[int]]:
    import tensorflow as tf

    steps: dict[str, list[int]] = {}
    for raw in tf.data.TFRecordDataset(str(path)):
        event = tf.compat.v1.Event.FromString(raw.numpy())
        for value in event.summary.value:
            assert value.metadata.plugin_data.plugin_name == "scalars"
            steps.setdefault(value.tag, []).append(event.step)
    return steps


def _run_main(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    return subprocess.Popen(
        [sys.executable, "-m", "cwcl_jax.main", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (("--mode=evaluate",), "--mode must be one of ('train', 'eval', 'compile_check')"),
        (("--config.optimizer.learing_rate=1",), "learing_rate"),
    ],
    ids=["bad-mode", "config-typo"],
)
def test_bad_flags_fail_fast_naming_them(tmp_path, args, message):
    proc = _run_main(f"--config={DEMO}:tiny", f"--workdir={tmp_path}", *args)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert message in output
    assert not (tmp_path / "checkpoints").exists()


def test_config_arg_errors():
    with pytest.raises(ValueError, match="unknown argument 'huge'"):
        load_sibling(DEMO, "demo").get_config("huge")


def _wait_for_checkpoint(workdir: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.5)


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path, data_dir):
    workdir = tmp_path / "run"
    proc = _run_main(f"--config={DEMO}:tiny", f"--workdir={workdir}",
                     f"--config.data.data_dir={data_dir}", "--config.total_steps=100000",
                     "--config.checkpoint_every_steps=5")  # fmt: skip
    _wait_for_checkpoint(workdir, proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert "Preemption notice: saved step" in output
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert 5 < steps[-1] < 100000  # saved at the step boundary after the signal


@pytest.mark.slow
def test_sigkill_then_restart_is_bitwise_identical(tmp_path, data_dir):
    """Kill -9 after a checkpoint, restart: final params equal an uninterrupted run's."""
    common = (f"--config={DEMO}:tiny", f"--config.data.data_dir={data_dir}",
              "--config.total_steps=8", "--config.checkpoint_every_steps=2")  # fmt: skip
    reference = _run_main(*common, f"--workdir={tmp_path / 'reference'}")
    interrupted_dir = tmp_path / "interrupted"
    interrupted = _run_main(*common, f"--workdir={interrupted_dir}")
    _wait_for_checkpoint(interrupted_dir, interrupted)
    interrupted.send_signal(signal.SIGKILL)
    interrupted.communicate(timeout=60)
    assert interrupted.returncode == -signal.SIGKILL
    resumed = _run_main(*common, f"--workdir={interrupted_dir}")
    for proc in (reference, resumed):
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output
    assert "Resumed from" in output
    config = _tiny(data_dir, total_steps=8)  # restored onto this process's 8-device mesh
    step_a, params_a = _restore_params(str(tmp_path / "reference"), config)
    step_b, params_b = _restore_params(str(interrupted_dir), config)
    assert step_a == step_b == 8
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(a, b)


def test_compile_check_prints_memory(capsys, data_dir):
    config = _tiny(data_dir, accum_steps=2)
    main.compile_check(config)
    out = capsys.readouterr().out
    assert "compile_check OK" in out
    assert "batch 16 = 8 shards x 2 micro-batches x 1 examples" in out
    assert "per device total" in out and "FLOPs per step" in out


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_metrics_writer_progress_bar_and_json(tmp_path):
    stream = _Terminal()
    writer = metrics.MetricsWriter(tmp_path, total_steps=4, tensorboard=False, stream=stream)
    writer.write(2, {"loss": np.float32(1.5), "accuracy_t2f": 0.25})
    writer.write(4, {"loss": float("nan")})
    writer.close()
    assert "\r[############............] 2/4 loss=1.5 accuracy_t2f=0.25" in stream.getvalue()
    assert "\r[########################] 4/4 loss=nan" in stream.getvalue()
    assert _records(str(tmp_path)) == [
        {"step": 2, "loss": 1.5, "accuracy_t2f": 0.25},
        {"step": 4, "loss": "nan"},  # JSON has no NaN: kept valid as a string
    ]
    silent = metrics.MetricsWriter(tmp_path / "other", total_steps=4, enabled=False)
    silent.write(1, {"loss": 1.0})
    assert not (tmp_path / "other").exists()


def test_trainable_tower_initialized_from_pretrained_checkpoint():
    """speech_cwcl's path: the trainable tower starts from a Whisper encoder's weights."""
    from cwcl_jax.models import load_pretrained

    whisper = str(REPO / "tests" / "fixtures" / "whisper_tiny")
    config = load_sibling(DEMO, "demo_speech").get_config("tiny")
    config.model.trainable.path = whisper
    config.model.trainable.arch = ""
    config.model.trainable.overrides = {}
    exp, _, trainable_init = experiment.build_experiment(config, with_weights=True)
    state = experiment.init_state(exp, trainable_init)
    expected = load_pretrained(whisper).params
    got = state.params["trainable_tower"]
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
