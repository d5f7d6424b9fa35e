"""Frozen-tower cache: step time and end-to-end time with and without it, side by side.

One process, one CPU device, in one run:
1. steps, per config (synthetic batch of the config's shapes, median of --rounds): the
   train step that runs the frozen tower, the train step fed cached `frozen_raw`, the
   trainable tower's forward + backward alone, the frozen tower's forward alone.
   Target: cached step <= 1.1 x trainable fwd+bwd.
2. end to end, configs/demo.py on real data: `main.train` from a fresh workdir for
   --e2e_steps steps on the first --e2e_examples training examples, without the cache and
   with it (its build included: examples through the frozen tower once, then the steps).
   Wall time of the whole call: weights, compiles, data, build, steps, checkpoint.
3. each config's full run projected: total_steps x step time of 1., plus, with the
   cache, its build over the whole train split at the build rate of 2. (whose fixed
   costs, weights and compile, are spread over its examples: an over-estimate; both demos
   run the same frozen MiniLM on 32 tokens). This decides whether a config should use
   the cache.

  .venv/bin/python benchmarks/frozen_cache.py [--data_dir DIR] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

import jax
import ml_collections
import tensorflow_datasets as tfds
from train_step import synthetic_batch  # benchmarks/train_step.py

import cwcl_jax.data  # noqa: F401  (registers the builders)
from cwcl_jax import experiment, frozen_cache, train_step
from cwcl_jax import main as trainer
from cwcl_jax.config_utils import load_sibling
from cwcl_jax.models import frozen_features

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
_TRAIN_EXAMPLES = {"cwcl_shapes": 20_000, "cwcl_spoken/intents": 3_400}


def load_config(name: str) -> ml_collections.ConfigDict:
    config = load_sibling(os.path.join(_CONFIGS, name), name.removesuffix(".py")).get_config()
    config.mesh.data = 1  # one device: the comparison is about work per step, not sharding
    return config


def interleaved_medians(programs: dict[str, Callable[[], object]], rounds: int) -> dict:
    """Median seconds per program, timed in rounds (one call of each per round) so load
    from other jobs on a shared machine hits them alike; also the median per-round ratio
    of the cached step to the trainable tower's fwd+bwd."""
    for program in programs.values():
        jax.block_until_ready(program())  # compile + warm up
    times: dict[str, list[float]] = {name: [] for name in programs}
    for _ in range(rounds):
        for name, program in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(program())
            times[name].append(time.perf_counter() - start)
    ratios = [c / t for c, t in zip(times["cached step"], times["trainable fwd+bwd"], strict=True)]
    return {**{k: statistics.median(v) for k, v in times.items()},
            "ratio": statistics.median(ratios)}  # fmt: skip


def step_times(config: ml_collections.ConfigDict, rounds: int) -> dict[str, float]:
    """Seconds per call of the four programs of part 1, on one synthetic batch."""
    config.frozen_cache.enabled = False
    exp, frozen_params, _ = experiment.build_experiment(config, with_weights=True)
    parts = exp.parts
    batch = synthetic_batch(jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype),
                                         exp.batch_spec))  # fmt: skip
    frozen_forward = jax.jit(lambda f, x: frozen_features(parts.frozen_module, f, x))
    cached_batch = {
        parts.trainable_key: batch[parts.trainable_key],
        train_step.FROZEN_RAW: frozen_forward(frozen_params, batch[parts.frozen_key]),
    }
    config.frozen_cache.enabled = True
    cached_exp, _, _ = experiment.build_experiment(config, with_weights=False)
    programs = {}
    for name, exp_, batch_ in (("step", exp, batch), ("cached step", cached_exp, cached_batch)):
        step = train_step.jit_train_step(exp_.parts, exp_.state_shardings,
                                         exp_.frozen_shardings, exp_.batch_shardings)  # fmt: skip
        holder = {"state": experiment.init_state(exp_)}

        def run(step=step, holder=holder, batch_=batch_):
            holder["state"], metrics = step(holder["state"], frozen_params, batch_)
            return metrics["loss"]

        programs[name] = run
    params = experiment.init_state(exp).params
    key = jax.random.key(0)
    tower_grad = jax.jit(jax.grad(lambda p, x: train_step._embed_trainable(
        parts, p, x, key).sum()))  # fmt: skip
    trainable_inputs, frozen_inputs = batch[parts.trainable_key], batch[parts.frozen_key]
    programs["trainable fwd+bwd"] = lambda: tower_grad(params, trainable_inputs)
    programs["frozen fwd"] = lambda: frozen_forward(frozen_params, frozen_inputs)
    return interleaved_medians(programs, rounds)


def end_to_end(data_dir: str, steps: int, examples: int) -> dict[str, float]:
    """Wall seconds of training configs/demo.py without the cache; with it, of the build
    (as `python -m cwcl_jax.frozen_cache` does it: weights, compile, pass) and of the
    training that reads it."""
    seconds = {}
    # The cached run goes first and pays the process's one-time start-up (TF, tf.data,
    # tokenizer): a conservative order for the cache. Evaluation is off in both.
    for enabled in (True, False):
        config = load_config("demo.py")
        config.eval_every_steps = 0
        config.data.data_dir = data_dir
        config.data.train_split = f"train[:{examples}]"
        config.total_steps = config.checkpoint_every_steps = config.log_every_steps = steps
        config.optimizer.warmup_steps = 1
        config.frozen_cache.enabled = enabled
        workdir = tempfile.mkdtemp(prefix="cwcl_cache_bench_")
        if enabled:
            start = time.perf_counter()
            exp, frozen_params, _ = experiment.build_experiment(config, with_weights=True)
            frozen_cache.build(exp, frozen_params, frozen_cache.cache_dir(config, workdir))
            seconds["build"] = time.perf_counter() - start
        start = time.perf_counter()
        trainer.train(config, workdir)
        seconds[enabled] = time.perf_counter() - start
        shutil.rmtree(workdir)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None, help="default: a temporary directory")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", nargs="+", default=["demo.py", "demo_speech.py"])
    parser.add_argument("--e2e_steps", type=int, default=10)
    # 10 x 128 / 1664 = 0.77 epochs, as the demo's 120 x 128 steps on 20000 examples
    parser.add_argument("--e2e_examples", type=int, default=1664)
    args = parser.parse_args()
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="cwcl_bench_")
    tfds.builder("cwcl_shapes", data_dir=data_dir).download_and_prepare()
    print(f"{jax.devices()[0].device_kind}, {jax.device_count()} device(s), "
          f"{os.cpu_count()} CPU cores, median of {args.rounds} interleaved rounds")  # fmt: skip
    print("\n1. step (ms)")
    print(f"{'config':<16}{'step':>10}{'cached':>10}{'trainable':>11}{'frozen':>10}"
          f"{'cached / trainable':>20}")  # fmt: skip
    steps = {}
    for name in args.configs:
        t = steps[name] = step_times(load_config(name), args.rounds)
        ratio = t["ratio"]
        print(f"{name:<16}{t['step'] * 1e3:10.0f}{t['cached step'] * 1e3:10.0f}"
              f"{t['trainable fwd+bwd'] * 1e3:11.0f}{t['frozen fwd'] * 1e3:10.0f}"
              f"{ratio:19.3f}x (target <= 1.1)", flush=True)  # fmt: skip

    e2e = end_to_end(data_dir, args.e2e_steps, args.e2e_examples)
    build_rate = args.e2e_examples / e2e["build"]
    epochs = args.e2e_steps * 128 / args.e2e_examples
    print(f"\n2. end to end, demo.py, {args.e2e_steps} steps x 128 on train[:{args.e2e_examples}]"
          f" ({epochs:.2f} epochs)"
          f": without cache {e2e[False]:.1f} s; with cache {e2e['build'] + e2e[True]:.1f} s = "
          f"build {e2e['build']:.1f} s ({build_rate:.0f} examples/s) + training "
          f"{e2e[True]:.1f} s")  # fmt: skip

    print(f"\n3. full runs projected (s; build at {build_rate:.0f} examples/s)")
    print(f"{'config':<16}{'steps x batch':>14}{'epochs':>8}{'no cache':>10}{'build':>8}"
          f"{'cache':>8}  faster")  # fmt: skip
    for name in args.configs:
        config, t = load_config(name), steps[name]
        examples = _TRAIN_EXAMPLES[config.data.name]
        epochs = config.total_steps * config.batch_size / examples
        plain = config.total_steps * t["step"]
        build = examples / build_rate
        cached = build + config.total_steps * t["cached step"]
        faster = "cache" if cached < plain else "no cache"
        print(f"{name:<16}{config.total_steps:>7} x {config.batch_size:<4}{epochs:8.2f}"
              f"{plain:10.0f}{build:8.0f}{cached:8.0f}  {faster}")  # fmt: skip


if __name__ == "__main__":
    main()
