"""Entry point: `python -m cwcl_jax.main --config configs/demo.py --workdir DIR`.

Modes: `train` (default; resumes from the workdir's latest checkpoint; zero-shot evaluation
every `eval_every_steps`), `eval` (evaluates the workdir's latest checkpoint, or
`--checkpoint_step`, read-only, with the run's recorded config: writes eval_results.json and
plots there) and `compile_check` (compiles the train step for the
configured mesh from abstract inputs, without data or weights, and prints the per-device
memory XLA reports).
"""

from __future__ import annotations

import json
import logging as pylogging
import os
import sys

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cwcl_jax import (
    checkpointing,
    config_utils,
    distributed,
    evaluate,
    experiment,
    frozen_cache,
    loop,
    metrics,
    sharding,
    train_step,
)
from cwcl_jax.data.pipeline import make_pipeline

MODES = ("train", "eval", "compile_check")

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py[:arg]")
_WORKDIR = flags.DEFINE_string("workdir", None, "metrics, checkpoints, TensorBoard events")
_MODE = flags.DEFINE_string("mode", "train", f"one of {MODES}")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "multi-process start-up; see docs/launch.md")  # fmt: skip
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the run")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")
_CHECKPOINT_STEP = flags.DEFINE_integer(
    "checkpoint_step", None, "--mode=eval: the checkpoint step to evaluate (default: the latest)"
)
flags.mark_flags_as_required(["config", "workdir"])
flags.register_validator(
    "mode",
    lambda mode: mode in MODES,
    message=f"--mode must be one of {MODES}",
)


def _write_config(config, workdir: str) -> dict:
    config_json = config_utils.to_json_dict(config)
    if _is_primary():
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config_json, f, indent=2)
    return config_json


def _is_primary() -> bool:
    return jax.process_index() == 0


def train(config, workdir: str) -> None:
    """Train to `config.total_steps`, resuming from the latest checkpoint in `workdir`."""
    exp, frozen_params, trainable_init = experiment.build_experiment(config, with_weights=True)
    tokenizer = exp.frozen_processor if exp.parts.frozen_key == "text" else None
    cache = None
    if config.frozen_cache.enabled:
        cache = frozen_cache.open_or_build(exp, frozen_params, workdir)
    batches = make_pipeline(
        config.data, split=config.data.train_split, global_batch_size=config.batch_size,
        mesh=exp.mesh, seed=config.seed, tokenizer=tokenizer, frozen_cache=cache,
    )  # fmt: skip
    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints
    )
    writer = metrics.MetricsWriter(workdir, config.total_steps, enabled=_is_primary())
    io = loop.LoopIO(
        checkpointer=ckpt,
        writer=writer,
        watcher=checkpointing.PreemptionWatcher(),
        config_json=_write_config(config, workdir),
        evaluate=_eval_fn(exp, frozen_params, workdir, writer),
    )
    try:
        restored = ckpt.restore_latest(experiment.abstract_state(exp))
        if restored is None:
            state = experiment.init_state(exp, trainable_init)
        else:
            step, state, data_state = restored
            batches.set_state(data_state)
            logging.info("Resumed from %s at step %d.", ckpt.directory, step)
        step_fn = train_step.jit_train_step(
            exp.parts, exp.state_shardings, exp.frozen_shardings, exp.batch_shardings
        )
        _, preempted = loop.train_loop(exp, step_fn, state, frozen_params, batches, io)
        logging.info("Stopped for preemption." if preempted else "Training done.")
    finally:
        ckpt.wait()  # a pending save completes even when the loop raised
        ckpt.close()
        io.writer.close()
        io.watcher.close()


def _eval_fn(exp, frozen_params, workdir: str, writer):
    """(state, step) -> results, or None when evaluation is off (eval_every_steps=0)."""
    if not exp.config.eval_every_steps or not exp.config.eval.tasks:
        return None
    evaluator = evaluate.ExperimentEvaluator(exp)  # a bad eval config fails before step 1

    def run(state, step: int) -> dict:
        results = evaluator(state.params, frozen_params, step=step, workdir=workdir, writer=writer)
        _print_results(results, step, workdir)
        return results

    return run


def _print_results(results: dict, step: int, workdir: str) -> None:
    if _is_primary():
        print(f"\nEvaluation at step {step}:\n{evaluate.summary_table(results)}", flush=True)
        print(
            f"Results: {workdir}/eval_results.json; plots: {workdir}/plots; "
            f"checkpoints: {workdir}/checkpoints",
            flush=True,
        )


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    step: int | None = None,
    overrides: dict | None = None,
) -> dict:
    """Zero-shot evaluation of checkpoint `step` (default: the latest) of the run in `workdir`.

    The model is the one the run recorded (see `config_utils.recorded_run_config`); `config`
    supplies the eval tasks. Read-only: a damaged checkpoint is an error, nothing is renamed.
    """
    run_config = config_utils.recorded_run_config(workdir, config, overrides or {})
    if not run_config.eval.tasks:
        raise ValueError("--mode=eval: config.eval.tasks of --config is empty; nothing to evaluate")
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
        step = ckpt.resolve_step(step)  # before the towers load: a bad step fails fast
        exp, frozen_params, _ = experiment.build_experiment(run_config, with_weights=True)
        evaluator = evaluate.ExperimentEvaluator(exp)
        state, _ = ckpt.restore(step, experiment.abstract_state(exp))
    finally:
        ckpt.close()
    results = evaluator(state.params, frozen_params, step=step, workdir=workdir)
    _print_results(results, step, workdir)
    return results


def compile_check(config) -> None:
    """Compile the train step from abstract inputs; print per-device memory and FLOPs."""
    exp, frozen_params, _ = experiment.build_experiment(config, with_weights=False)
    step_fn = train_step.jit_train_step(
        exp.parts, exp.state_shardings, exp.frozen_shardings, exp.batch_shardings
    )
    lowered = step_fn.lower(experiment.abstract_state(exp), frozen_params, exp.batch_spec)
    compiled = lowered.compile()
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, list) else cost
    gib = lambda n: f"{n / 2**30:.3f} GiB"
    shards = sharding.num_batch_shards(exp.mesh)
    per_device = config.batch_size // shards // config.accum_steps
    lines = [
        f"mesh {dict(exp.mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} devices",
        f"batch {config.batch_size} = {shards} shards x {config.accum_steps} micro-batches "
        f"x {per_device} examples",
        f"per device: arguments {gib(memory.argument_size_in_bytes)}, outputs "
        f"{gib(memory.output_size_in_bytes)}, temporaries {gib(memory.temp_size_in_bytes)}, "
        f"aliased {gib(memory.alias_size_in_bytes)}",
        f"per device total (args + outputs + temps - aliased): {gib(_total_bytes(memory))}",
        f"per device FLOPs per step by XLA's cost analysis (loop bodies such as the "
        f"micro-batch scan counted once): {cost.get('flops', float('nan')):.4g}",
    ]
    print("compile_check OK\n  " + "\n  ".join(lines), flush=True)


def _total_bytes(memory) -> int:
    return (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )


def _quiet_orbax(record: pylogging.LogRecord) -> bool:
    """Orbax logs a dozen INFO lines per save; keep its warnings and errors only."""
    return record.levelno > pylogging.INFO or f"{os.sep}orbax{os.sep}" not in record.pathname


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_quiet_orbax)
    distributed.initialize(
        mode=_DISTRIBUTED.value,
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )
    config = _CONFIG.value
    if _CHECKPOINT_STEP.value is not None and _MODE.value != "eval":
        raise app.UsageError("--checkpoint_step applies to --mode=eval only")
    if _MODE.value == "compile_check":
        compile_check(config)
    elif _MODE.value == "eval":
        overrides = config_flags.get_override_values(flags.FLAGS["config"])
        step = _CHECKPOINT_STEP.value
        evaluate_checkpoint(config, _WORKDIR.value, step=step, overrides=overrides)
    else:
        train(config, _WORKDIR.value)


if __name__ == "__main__":
    sys.exit(app.run(main))
