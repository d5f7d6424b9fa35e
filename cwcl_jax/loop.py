"""The training loop: batches in, steps, metrics, checkpoints, preemption, non-finite stop."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
from absl import logging

from cwcl_jax import checkpointing, metrics
from cwcl_jax.experiment import Experiment, check_batch
from cwcl_jax.train import TrainState


class NonFiniteError(FloatingPointError):
    """The loss or the gradient norm of a step is NaN or infinite."""


@dataclasses.dataclass
class LoopIO:
    """The loop's side effects, built by main (or a test)."""

    checkpointer: checkpointing.Checkpointer
    writer: metrics.MetricsWriter
    watcher: checkpointing.PreemptionWatcher
    config_json: Mapping[str, Any]
    # (state, step) -> None, every config.eval_every_steps (and at the last step); None: off.
    evaluate: Callable[[TrainState, int], Any] | None = None


def check_finite(step: int, scalars: Mapping[str, float]) -> None:
    """Stop before anything of this step is saved when loss or gradients blew up."""
    bad = {k: scalars[k] for k in ("loss", "grad_norm") if not math.isfinite(scalars[k])}
    if bad:
        raise NonFiniteError(
            f"step {step}: non-finite {bad}; stopping without saving this state "
            "(the last checkpoint is intact). Lower optimizer.learning_rate or check the data."
        )


def _should_save(step: int, every: int, total: int) -> bool:
    return step % every == 0 or step == total


def train_loop(
    experiment: Experiment,
    step_fn: Callable,
    state: TrainState,
    frozen_params: Any,
    batches: Iterator[dict],
    io: LoopIO,
) -> tuple[TrainState, bool]:
    """Train from `state.step` to `config.total_steps` -> (state, preempted).

    A preemption notice saves the next step boundary and returns early.
    """
    config = experiment.config
    keys = tuple(experiment.batch_spec)  # the towers' inputs, or frozen_raw from the cache
    step = int(jax.device_get(state.step))
    throughput = metrics.Throughput(config.batch_size)
    first = True
    while step < config.total_steps:
        batch = next(batches)
        if first:
            check_batch(batch, experiment.batch_spec)
        state, step_metrics = step_fn(state, frozen_params, {k: batch[k] for k in keys})
        step += 1
        scalars = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        check_finite(step, scalars)
        if first:  # the first step includes compilation: keep it out of the throughput
            throughput.read_and_reset()
            first = False
        else:
            throughput.tick()
        if _should_save(step, config.log_every_steps, config.total_steps):
            io.writer.write(step, {**scalars, **throughput.read_and_reset()})
        preempted = io.watcher.reached(step)
        if preempted or _should_save(step, config.checkpoint_every_steps, config.total_steps):
            io.checkpointer.save(step, state, batches.get_state(), io.config_json)
        if preempted:
            logging.warning("Preemption notice: saved step %d, stopping.", step)
            return state, True
        if io.evaluate and _should_save(step, config.eval_every_steps, config.total_steps):
            io.evaluate(state, step)
    return state, False
