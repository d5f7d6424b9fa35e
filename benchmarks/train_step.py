"""Train-step overhead and achieved FLOP/s for the demo model on this machine.

Measured side by side in one process, on the same synthetic batch (demo shapes):
  step      the full jitted train step (frozen forward, trainable forward + backward,
            CWCL loss, AdamW update), state donated as in training;
  parts     the trainable tower's forward + backward (grad of its embeddings' sum)
            plus the frozen tower's forward, each jitted on its own;
  matmul    a square float32 matrix product, the machine's practical peak.
Target: step <= 1.15 x parts. FLOP/s come from XLA's cost analysis of each program.

  .venv/bin/python benchmarks/train_step.py [--config configs/demo.py] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cwcl_jax import experiment, train_step
from cwcl_jax.config_utils import load_sibling
from cwcl_jax.models import frozen_features


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flops_of(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def synthetic_batch(spec: dict, vocab: int = 1000) -> dict:
    rng = np.random.default_rng(0)

    def make(s: jax.ShapeDtypeStruct):
        if s.dtype == jnp.int32:
            return jnp.asarray(rng.integers(1, vocab, s.shape), jnp.int32)
        return jnp.asarray(rng.normal(size=s.shape), s.dtype)

    batch = jax.tree.map(make, spec)
    for inputs in batch.values():  # masks all ones
        for name in ("attention_mask", "mel_mask"):
            if name in inputs:
                inputs[name] = jnp.ones_like(inputs[name])
    return batch


def matmul_flops_per_sec(n: int, repeats: int) -> float:
    a = jnp.asarray(np.random.default_rng(1).normal(size=(n, n)), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    return 2 * n**3 / median_seconds(lambda: matmul(a), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.py")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    path, _, arg = args.config.partition(":")
    config = load_sibling(path, path.rsplit("/", 1)[-1].removesuffix(".py")).get_config(arg or None)
    config.mesh.data = 1  # one device: the comparison is about overhead, not sharding
    config.frozen_cache.enabled = False  # the step under test runs the frozen tower itself
    exp, frozen_params, _ = experiment.build_experiment(config, with_weights=True)
    parts = exp.parts
    batch = synthetic_batch(jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype),
                                         exp.batch_spec))  # fmt: skip
    state = experiment.init_state(exp)
    step = train_step.jit_train_step(
        parts, exp.state_shardings, exp.frozen_shardings, exp.batch_shardings
    )
    step_flops = flops_of(step, state, frozen_params, batch)
    holder = {"state": state}

    def run_step():
        holder["state"], metrics = step(holder["state"], frozen_params, batch)
        return metrics["loss"]

    trainable_inputs, frozen_inputs = batch[parts.trainable_key], batch[parts.frozen_key]
    key = jax.random.key(0)
    tower_grad = jax.jit(jax.grad(
        lambda p: train_step._embed_trainable(parts, p, trainable_inputs, key).sum()
    ))  # fmt: skip
    frozen_forward = jax.jit(lambda f: frozen_features(parts.frozen_module, f, frozen_inputs))
    params = jax.tree.map(jnp.copy, holder["state"].params)  # the step donates the state
    parts_flops = flops_of(tower_grad, params) + flops_of(frozen_forward, frozen_params)

    t_step = median_seconds(run_step, args.repeats)
    t_tower = median_seconds(lambda: tower_grad(params), args.repeats)
    t_frozen = median_seconds(lambda: frozen_forward(frozen_params), args.repeats)
    peak = matmul_flops_per_sec(1024, args.repeats)
    t_parts = t_tower + t_frozen
    rows = [
        ("train step", t_step, step_flops),
        ("trainable fwd+bwd", t_tower, None),
        ("frozen fwd", t_frozen, None),
        ("sum of parts", t_parts, parts_flops),
    ]
    print(f"config {args.config}, batch {config.batch_size}, {jax.devices()[0].device_kind}, "
          f"{jax.device_count()} device(s), median of {args.repeats}")  # fmt: skip
    print(f"{'program':<20}{'ms':>10}{'GFLOP':>10}{'GFLOP/s':>10}{'of matmul':>11}")
    for name, seconds, flops in rows:
        gflop = f"{flops / 1e9:10.2f}" if flops else " " * 10
        rate = f"{flops / seconds / 1e9:10.1f}{flops / seconds / peak:11.1%}" if flops else ""
        print(f"{name:<20}{seconds * 1e3:10.1f}{gflop}{rate}")
    print(f"{'matmul 1024^2 f32':<20}{'':>20}{peak / 1e9:10.1f}{1:11.1%}")
    print(f"step / (trainable fwd+bwd + frozen fwd) = {t_step / t_parts:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
