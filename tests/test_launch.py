"""The TPU pod and SLURM launchers, in --dry-run mode (they print, never run, commands)."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _launch(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "launch" / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


TPU_ARGS = (
    "--tpu=pod1",
    "--zone=us-central2-b",
    "--project=proj",
    "--config=configs/lit_cwcl_vit_b16.py",
    "--workdir=gs://bucket/run",
    "--dry-run",
    "--config.total_steps=7",
)


def test_tpu_pod_dry_run_prints_every_step_in_order():
    result = _launch("tpu_pod.py", *TPU_ARGS)
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.strip().splitlines()]
    assert len(commands) == 4
    pack, scp, setup, run = commands
    assert pack[:2] == ["bash", "-c"] and "git ls-files -z" in pack[2]
    zone = ["--worker=all", "--zone=us-central2-b", "--project=proj"]
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp",
                   "/tmp/cwcl_jax_code.tgz", "pod1:~/", *zone]  # fmt: skip
    assert setup[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1"]
    assert setup[-3:] == zone and run[-3:] == zone
    remote_setup = setup[6].removeprefix("--command=")
    assert remote_setup.startswith("(pkill -f '[-]m cwcl_jax[.]main' || true)")
    assert "./scripts/install.sh" in remote_setup and "'.[tpu]'" in remote_setup
    remote_run = run[6].removeprefix("--command=")
    assert remote_run == (
        "cd ~/cwcl_jax && nohup .venv/bin/python -m cwcl_jax.main "
        "--config=configs/lit_cwcl_vit_b16.py --workdir=gs://bucket/run --distributed=on "
        "--config.total_steps=7 > ~/cwcl_logs/$(hostname).log 2>&1 &"
    )
    assert result.stderr == ""  # nothing was executed


def test_stale_process_pattern_does_not_match_its_own_shell():
    import re

    pattern = "[-]m cwcl_jax[.]main"
    assert re.search(pattern, "python -m cwcl_jax.main --config=x")
    assert not re.search(pattern, f"bash -c (pkill -f '{pattern}' || true)")


def test_slurm_dry_run_prints_script_and_sbatch(tmp_path):
    workdir = tmp_path / "run"
    result = _launch(
        "slurm_gpu.py", "--nodes=4", "--gpus-per-node=8", "--partition=a100",
        "--config=configs/speech_cwcl.py", f"--workdir={workdir}", "--dry-run",
        "--config.batch_size=512",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"# {workdir}/cwcl.sbatch"
    assert lines[-1] == f"sbatch {workdir}/cwcl.sbatch"
    script = "\n".join(lines[1:-1])
    for directive in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8",
                      "--partition=a100", "--signal=TERM@300", "--requeue"):  # fmt: skip
        assert f"#SBATCH {directive}" in script
    srun = [line for line in lines if line.startswith("srun ")]
    assert srun == [
        f"srun --kill-on-bad-exit=1 --output={workdir}/logs/%j_%t.log "
        f"{REPO}/.venv/bin/python -m cwcl_jax.main --config=configs/speech_cwcl.py "
        f"--workdir={workdir} --distributed=on --config.batch_size=512"
    ]
    assert not workdir.exists()  # dry run writes nothing


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("slurm_gpu.py", ("--nodes=0", "--config=c", "--workdir=w", "--dry-run"),
         "--nodes and --gpus-per-node must be >= 1"),
        ("tpu_pod.py", ("--zone=z", "--project=p", "--config=c", "--workdir=w", "--dry-run"),
         "the following arguments are required: --tpu"),
        ("tpu_pod.py", (*TPU_ARGS, "stray"), "extra arguments are trainer flags"),
    ],
)  # fmt: skip
def test_launcher_errors(script, args, message):
    result = _launch(script, *args)
    assert result.returncode != 0
    assert message in result.stderr
