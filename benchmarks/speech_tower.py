"""Speech side timings: forward and forward+backward of the demo speech towers (jit, after
warm-up, median of repeats) and the log-mel front end's tf.data throughput.

.venv/bin/python benchmarks/speech_tower.py                 # batch 32, 2 s clips
.venv/bin/python benchmarks/speech_tower.py --batch 64 --seconds 4
`tower_step_times` is importable (benchmarks/towers.py reports the demo towers with it).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from train_step import median_seconds  # benchmarks/train_step.py

from cwcl_jax import audio
from cwcl_jax.models import build_tower


def speech_inputs(batch: int, frames: int, n_mels: int = 80, seed: int = 0) -> dict:
    """Random mel [batch, frames, n_mels] with clip lengths between half and all frames."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(frames // 2, frames + 1, size=batch)
    return {
        "mel": jnp.asarray(rng.standard_normal((batch, frames, n_mels)), jnp.float32),
        "mel_mask": jnp.asarray(np.arange(frames)[None] < lengths[:, None], jnp.int32),
    }


def tower_step_times(
    arch: str = "tiny", *, batch: int = 32, frames: int = 200, repeats: int = 10, **overrides
) -> dict[str, float]:
    """Median seconds of a jitted forward and forward+backward (grad w.r.t. all params)."""
    module = build_tower("speech", arch, **overrides)
    inputs = speech_inputs(batch, frames, module.config.n_mels)
    params = jax.jit(module.init)(jax.random.key(0), inputs)["params"]
    forward = jax.jit(lambda p, x: module.apply({"params": p}, x))
    loss = lambda p, x: jnp.mean(module.apply({"params": p}, x, train=True) ** 2)
    forward_backward = jax.jit(jax.value_and_grad(loss))
    return {
        "forward": median_seconds(lambda: forward(params, inputs), repeats),
        "forward_backward": median_seconds(lambda: forward_backward(params, inputs), repeats),
    }


def log_mel_clips_per_second(config: audio.LogMelConfig, clips: int = 512) -> float:
    """Clips/s of `audio.log_mel_spectrogram` mapped in parallel over a tf.data pipeline."""
    rng = np.random.default_rng(0)
    waves = rng.standard_normal((clips, config.max_samples)).astype(np.float32) * 0.1
    ds = tf.data.Dataset.from_tensor_slices(waves).map(
        lambda w: audio.log_mel_spectrogram(w, config), num_parallel_calls=tf.data.AUTOTUNE
    )
    for _ in ds.take(8):  # build the pipeline and trace the function
        pass
    start = time.perf_counter()
    for _ in ds:
        pass
    return clips / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    frames = round(args.seconds * 100)  # 10 ms hop
    print(
        f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"CPU cores: {os.cpu_count()}, batch {args.batch}, {args.seconds:g} s = {frames} frames"
    )
    print(f"{'tower':14s} {'forward ms':>11s} {'fwd+bwd ms':>11s} {'clips/s (fwd+bwd)':>18s}")
    for arch, dtype in (("tiny", jnp.float32), ("tiny", jnp.bfloat16), ("small", jnp.float32)):
        times = tower_step_times(
            arch, batch=args.batch, frames=frames, repeats=args.repeats, dtype=dtype
        )
        name = f"{arch}/{jnp.dtype(dtype).name}"
        print(
            f"{name:14s} {times['forward'] * 1e3:11.1f} {times['forward_backward'] * 1e3:11.1f} "
            f"{args.batch / times['forward_backward']:18.0f}"
        )
    config = audio.LogMelConfig(max_frames=frames)
    print(
        f"log-mel front end (tf.data, {frames} frames): "
        f"{log_mel_clips_per_second(config):.0f} clips/s"
    )


if __name__ == "__main__":
    main()
