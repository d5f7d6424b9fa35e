"""Loss benchmark: dense vs blockwise CWCL, the matmul floor, and the sharded loss memory.

    .venv/bin/python benchmarks/loss.py [--sizes 1024 4096 16000] [--dim 512] [--block 256]

For each N, times forward+backward (d/d anchors, candidates, temperature) of cwcl_loss with
paper weights built from frozen embeddings [N, dim], dense and blockwise, next to the
"floor": the four N x N x dim matrix products the loss cannot avoid (logits, weights,
gradient of anchors, gradient of candidates) in one jitted function. The three are run in
turn in each repetition, so machine load hits them alike; ratios are of medians.
Temporary memory is XLA's compiled memory_analysis().temp_size_in_bytes.

The sharded figure (two-tower loss, N=16000, 8 simulated CPU devices) is measured in a
subprocess, because the device count must be set before jax is imported.
"""

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import time

SHARDED_CHILD = "--sharded-child"
if SHARDED_CHILD in sys.argv:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from cwcl_jax.losses import (  # noqa: E402
    LossConfig,
    cwcl_loss,
    make_sharded_two_tower_loss,
    two_tower_loss,
)

MIB = 2**20


def unit_rows(key, n: int, dim: int) -> jax.Array:
    x = jax.random.normal(key, (n, dim))
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def inputs(n: int, dim: int):
    keys = jax.random.split(jax.random.key(0), 3)
    return (*(unit_rows(k, n, dim) for k in keys), jnp.float32(0.1))


def cwcl_step(block_size):
    """jit of loss and gradients wrt anchors, candidates and temperature."""

    def loss(anchors, candidates, frozen, tau):
        return cwcl_loss(anchors, candidates, frozen=frozen, temperature=tau, block_size=block_size)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 3)))


@jax.jit
def floor_step(anchors, candidates, frozen, tau):
    """The four unavoidable products: logits, weights, and both input gradients."""
    logits = anchors @ candidates.T
    weights = frozen @ frozen.T
    grad_logits = logits / tau - weights  # one cheap elementwise pass joins them
    return grad_logits @ candidates, grad_logits.T @ anchors


def compile_with_memory(fn, args):
    compiled = fn.lower(*args).compile()
    return compiled, compiled.memory_analysis().temp_size_in_bytes


def median_times(compiled: dict, args, repeats: int) -> dict[str, float]:
    """Median wall time of each compiled function, run in turn in every repetition."""
    jax.block_until_ready([fn(*args) for fn in compiled.values()])  # warm-up
    times = {name: [] for name in compiled}
    for _ in range(repeats):
        for name, fn in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def single_device_rows(n: int, dim: int, block: int, repeats: int) -> list[dict]:
    args = inputs(n, dim)
    fns = {"dense": cwcl_step(None), "blockwise": cwcl_step(block), "floor": floor_step}
    compiled, temp = {}, {}
    for name, fn in fns.items():
        compiled[name], temp[name] = compile_with_memory(fn, args)
    times = median_times(compiled, args, repeats)
    return [
        {
            "n": n,
            "mode": name,
            "time_s": times[name],
            "temp_mib": temp[name] / MIB,
            "vs_dense_time": times[name] / times["dense"],
            "vs_floor_time": times[name] / times["floor"],
            "vs_dense_temp": temp[name] / temp["dense"],
        }
        for name in fns
    ]


DEVICES = 8


def two_tower_temp(n: int, dim: int, block: int, mesh=None) -> float:
    """Compiled temp bytes (per device) of two-tower loss + d/d(trainable, temperature)."""
    config = LossConfig(block_size=block)
    if mesh is None:
        loss_fn = functools.partial(two_tower_loss, config=config)
        spec = jax.ShapeDtypeStruct((n, dim), jnp.float32)
    else:
        loss_fn = make_sharded_two_tower_loss(mesh, config, batch_axes=("data",))
        spec = jax.ShapeDtypeStruct((n, dim), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    loss = lambda p, q, r, t: loss_fn(p, q, r, temperature=t)[0]
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 3)))
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        return compile_with_memory(step, (spec, spec, spec, 0.1))[1]


def sharded_memory(n: int, dim: int, block: int) -> dict:
    """Per-device temp of the sharded loss (blocks of `block` and of block / DEVICES rows
    per device) against the single-device blockwise loss and the target."""
    mesh = jax.make_mesh((DEVICES,), ("data",), axis_types=(AxisType.Auto,))
    single = two_tower_temp(n, dim, block)
    gathered = 3 * n * dim * 4  # trainable, frozen and frozen_raw, all N rows, float32
    return {
        "n": n,
        "block": block,
        "single_mib": single / MIB,
        "sharded_mib": two_tower_temp(n, dim, block, mesh) / MIB,
        "sharded_small_mib": two_tower_temp(n, dim, block // DEVICES, mesh) / MIB,
        "gathered_mib": gathered / MIB,
        "target_mib": (single / 4 + gathered) / MIB,
    }


def print_single(rows: list[dict], dim: int, block: int, repeats: int) -> None:
    print(
        f"cwcl_loss fwd+bwd, paper weights from frozen [N, {dim}], D = {dim}, "
        f"block = {block}, median of {repeats}, {jax.devices()[0].device_kind}"
    )
    header = "|     N | mode      | time (s) | temp (MiB) | time/dense | time/floor | temp/dense |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(
            f"| {r['n']:5d} | {r['mode']:9s} | {r['time_s']:8.3f} | {r['temp_mib']:10.1f} | "
            f"{r['vs_dense_time']:10.2f} | {r['vs_floor_time']:10.2f} | "
            f"{r['vs_dense_temp']:10.3f} |"
        )


def print_sharded(r: dict) -> None:
    print(f"\ntwo_tower_loss fwd+bwd (default cwcl, blockwise), N = {r['n']}, temporary memory")
    rows = [
        (f"1 device, block {r['block']}", r["single_mib"]),
        (f"{DEVICES} devices, block {r['block']} per device", r["sharded_mib"]),
        (f"{DEVICES} devices, block {r['block'] // DEVICES} per device", r["sharded_small_mib"]),
        (f"target: 1 device / 4 + gathered {r['gathered_mib']:.1f}", r["target_mib"]),
    ]
    for label, mib in rows:
        print(f"  {label:45s} {mib:8.1f} MiB")


def run_sharded_child(n: int, dim: int, block: int) -> dict:
    command = [
        sys.executable,
        __file__,
        SHARDED_CHILD,
        "--sizes",
        str(n),
        "--dim",
        str(dim),
        "--block",
        str(block),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sharded-n", type=int, default=16000)
    parser.add_argument("--skip-sharded", action="store_true")
    parser.add_argument(SHARDED_CHILD, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sharded_child:
        print(json.dumps(sharded_memory(args.sizes[0], args.dim, args.block)))
        return
    rows = []
    for n in args.sizes:
        rows += single_device_rows(n, args.dim, args.block, args.repeats)
    print_single(rows, args.dim, args.block, args.repeats)
    if not args.skip_sharded:
        print_sharded(run_sharded_child(args.sharded_n, args.dim, args.block))


if __name__ == "__main__":
    main()
