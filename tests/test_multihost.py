"""Multi-process start-up: flag/env handling (fast), and 2 processes x 4 CPU devices
reaching the same loss as 1 process x 8 devices (slow)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cwcl_jax import distributed

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "environ, cluster",
    [
        ({}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "slurm"),
        ({"TPU_WORKER_HOSTNAMES": "w0"}, None),
        ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, "tpu"),
        ({"TPU_PROCESS_ADDRESSES": "a:1,b:1"}, "tpu"),
        ({"MEGASCALE_COORDINATOR_ADDRESS": "c:8080"}, "tpu"),
        ({"JAX_COORDINATOR_ADDRESS": "h:1234"}, "env"),
    ],
)
def test_detect_cluster(environ, cluster):
    assert distributed.detect_cluster(environ) == cluster


def test_single_process_environment_does_nothing():
    assert distributed.initialize(mode="auto", environ={}) is False
    slurm = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8"}
    assert distributed.initialize(mode="off", environ=slurm) is False


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"coordinator_address": "h:1"}, "--coordinator_address given without --num_processes"),
        ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2},
         r"--process_id=2 not in \[0, 2\)"),
        ({"mode": "sometimes"}, "--distributed must be one of"),
        ({"mode": "off", "coordinator_address": "h:1", "num_processes": 2, "process_id": 0},
         "contradicts"),
    ],
)  # fmt: skip
def test_initialize_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distributed.initialize(environ={}, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdir: Path, data_dir: str, devices: int, *extra: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "cwcl_jax.main", "--config=configs/demo.py:tiny",
         f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
         "--config.total_steps=4", "--config.mesh.fsdp=2", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _losses(workdir: Path) -> list[float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    data_dir = str(tmp_path / "tfds")
    single = _start(tmp_path / "single", data_dir, 8, "--distributed=off")
    output, _ = single.communicate(timeout=900)  # also builds the dataset once
    assert single.returncode == 0, output
    port = _free_port()
    procs = [
        _start(
            tmp_path / "multi",
            data_dir,
            4,
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        )  # fmt: skip
        for i in range(2)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, output
    single_losses, multi_losses = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
    assert len(single_losses) == 2
    assert multi_losses == pytest.approx(single_losses, rel=1e-5)
