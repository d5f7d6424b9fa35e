"""Multi-process start-up: `jax.distributed.initialize` from flags or the environment.

Three ways in, checked in this order:
1. explicit `coordinator_address`, `num_processes`, `process_id` (all three, e.g. local
   multi-process tests or a hand-rolled cluster);
2. `mode="on"`, or `mode="auto"` with a recognised multi-process environment: SLURM
   (`srun` with more than one task), a Cloud TPU pod slice (`TPU_WORKER_HOSTNAMES` /
   `TPU_PROCESS_ADDRESSES` listing several workers, or multislice), or an explicit
   `JAX_COORDINATOR_ADDRESS`: `jax.distributed.initialize()` without arguments, so JAX's
   own cluster detection fills in the details;
3. otherwise a single process, nothing to do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
from absl import logging

MODES = ("auto", "on", "off")


def detect_cluster(environ: Mapping[str, str] = os.environ) -> str | None:
    """Name of the multi-process environment we run in ("slurm", "tpu", "env"), if any."""
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return "env"
    if "SLURM_JOB_ID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    workers = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES") or ""
    if len([w for w in workers.split(",") if w]) > 1 or environ.get(
        "MEGASCALE_COORDINATOR_ADDRESS"
    ):
        return "tpu"
    return None


def initialize(
    *,
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> bool:
    """Start the JAX distributed runtime if this run spans several processes.

    Returns True when `jax.distributed.initialize` was called. Must run before any other
    JAX call that touches devices.
    """
    if mode not in MODES:
        raise ValueError(f"--distributed must be one of {MODES}, got {mode!r}")
    explicit = {
        "--coordinator_address": coordinator_address,
        "--num_processes": num_processes,
        "--process_id": process_id,
    }
    given = [name for name, value in explicit.items() if value is not None]
    if given and len(given) != len(explicit):
        missing = sorted(set(explicit) - set(given))
        raise ValueError(f"{', '.join(given)} given without {', '.join(missing)}")
    if mode == "off":
        if given:
            raise ValueError("--distributed=off contradicts --coordinator_address")
        return False
    if given:
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} not in [0, {num_processes})")
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
        return True
    cluster = detect_cluster(environ)
    if mode == "on" or cluster is not None:
        logging.info("Initializing jax.distributed from the environment (%s).", cluster or "on")
        jax.distributed.initialize()
        return True
    return False
