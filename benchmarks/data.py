"""Input pipeline throughput beside the train steps it feeds, on this machine's CPUs.

.venv/bin/python benchmarks/data.py [--data_dir DIR] [--seconds S] [--skip_build]

Measured side by side in one run:
1. the `cwcl_shapes` build (20000 + 2000 examples, 64 px) into a fresh directory;
2. image-text: the demo's pipeline (configs/demo.py: cwcl_shapes, MiniLM tokenizer,
   batch 128) alone, the demo train step on one cached batch, and the step fed by the
   pipeline (training is input-bound when this falls below the cached-batch rate);
3. speech-text: the pipeline on `cwcl_spoken/intents_tiny` (espeak-ng, 4 s log-mels,
   batch 32) and a step of the tiny speech tower under frozen MiniLM, the same three ways.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator

import jax
import ml_collections
import tensorflow_datasets as tfds

from cwcl_jax import experiment, train_step
from cwcl_jax.config_utils import load_sibling
from cwcl_jax.data import pipeline

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
demo = load_sibling(os.path.join(_CONFIGS, "demo.py"), "demo")
common = load_sibling(os.path.join(_CONFIGS, "demo.py"), "common")


def rate(produce: Callable[[], object], batch_size: int, seconds: float) -> float:
    """Examples per second of `produce()` (one batch per call) after one warm-up call."""
    jax.block_until_ready(produce())
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        jax.block_until_ready(produce())
        count += 1
    return count * batch_size / (time.perf_counter() - start)


def build_shapes(data_dir: str) -> float:
    """Seconds to build the default cwcl_shapes config from nothing."""
    shutil.rmtree(os.path.join(data_dir, "cwcl_shapes", "default"), ignore_errors=True)
    start = time.perf_counter()
    tfds.builder("cwcl_shapes", data_dir=data_dir).download_and_prepare()
    return time.perf_counter() - start


def speech_config(data_dir: str) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.batch_size = 32
    config.model.frozen = common.tower("text", path=common.minilm_path())
    config.model.trainable = common.tower("speech", arch="tiny")
    config.data.name = "cwcl_spoken/intents_tiny"
    config.data.features.image, config.data.features.speech = None, "audio"
    config.data.features.text = "text"
    config.data.audio_max_seconds = 4.0
    config.data.data_dir = data_dir
    return config


def measure(name: str, config: ml_collections.ConfigDict, seconds: float) -> None:
    """Prints pipeline, cached-batch step and pipeline-fed step rates for one config."""
    exp, frozen_params, trainable_init = experiment.build_experiment(config, with_weights=True)
    tokenizer = exp.frozen_processor if exp.parts.frozen_key == "text" else None
    make = lambda: pipeline.make_pipeline(
        config.data, split="train", global_batch_size=config.batch_size, mesh=exp.mesh,
        seed=0, tokenizer=tokenizer,
    )  # fmt: skip
    keys = (exp.parts.trainable_key, exp.parts.frozen_key)
    batches = make()
    pipeline_rate = rate(lambda: next(batches), config.batch_size, seconds)

    state = experiment.init_state(exp, trainable_init)
    step_fn = train_step.jit_train_step(
        exp.parts, exp.state_shardings, exp.frozen_shardings, exp.batch_shardings
    )
    cached = {k: v for k, v in next(make()).items() if k in keys}
    holder = {"state": state}

    def step(feed: Iterator[dict] | None) -> object:
        batch = cached if feed is None else {k: v for k, v in next(feed).items() if k in keys}
        holder["state"], step_metrics = step_fn(holder["state"], frozen_params, batch)
        return step_metrics

    cached_rate = rate(lambda: step(None), config.batch_size, seconds)
    feed = make()
    fed_rate = rate(lambda: step(feed), config.batch_size, seconds)
    print(
        f"{name:11s} | pipeline {pipeline_rate:8.1f} ex/s | step (cached batch) "
        f"{cached_rate:7.1f} ex/s | step fed by pipeline {fed_rate:7.1f} ex/s | "
        f"pipeline / step {pipeline_rate / cached_rate:5.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_dir", default=None, help="default: a temporary directory")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument("--skip_build", action="store_true", help="reuse a built cwcl_shapes")
    args = parser.parse_args()
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="cwcl_bench_")
    print(f"CPU cores: {os.cpu_count()}, jax devices: {jax.device_count()}, data: {data_dir}")
    if not args.skip_build:
        print(f"cwcl_shapes build (20000 + 2000 examples, 64 px): {build_shapes(data_dir):.1f} s")
    image_text = demo.get_config()
    image_text.data.data_dir = data_dir
    measure("image-text", image_text, args.seconds)
    measure("speech-text", speech_config(data_dir), args.seconds)


if __name__ == "__main__":
    main()
