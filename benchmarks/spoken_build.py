"""How fast cwcl_spoken synthesizes: one worker beside a thread pool, and the full build.

.venv/bin/python benchmarks/spoken_build.py             # 120 utterances, 1 vs N workers
.venv/bin/python benchmarks/spoken_build.py --full DIR  # also build both default configs
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import tensorflow_datasets as tfds

from cwcl_jax.data import builder_utils, spoken


def synthesis_rate(config: spoken.SpokenConfig, count: int, workers: int) -> tuple[float, float]:
    """(utterances per second, seconds of audio per second) over `count` utterances."""
    start = time.perf_counter()
    examples = builder_utils.ordered_parallel_map(
        lambda i: spoken.synthesize_example(config, "train", i), range(count), workers=workers
    )
    audio_seconds = sum(len(example["audio"]) for example in examples) / 16_000
    elapsed = time.perf_counter() - start
    return count / elapsed, audio_seconds / elapsed


def full_build(data_dir: str) -> None:
    for name in ("intents", "keywords"):
        shutil.rmtree(os.path.join(data_dir, "cwcl_spoken", name), ignore_errors=True)
        start = time.perf_counter()
        builder = tfds.builder(f"cwcl_spoken/{name}", data_dir=data_dir)
        builder.download_and_prepare()
        elapsed = time.perf_counter() - start
        count = sum(split.num_examples for split in builder.info.splits.values())
        size_mb = builder.info.dataset_size / 2**20
        print(
            f"full build {name:9s}: {count} utterances in {elapsed:6.1f} s "
            f"({count / elapsed:5.1f}/s), {size_mb:.0f} MiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=120)
    parser.add_argument("--full", metavar="DATA_DIR", default=None)
    args = parser.parse_args()
    print(f"CPU cores: {os.cpu_count()}")
    for task in ("intents", "keywords"):
        config = spoken.SpokenConfig(name="bench", task=task)
        for workers in (1, builder_utils.default_workers()):
            rate, audio_rate = synthesis_rate(config, args.count, workers)
            print(
                f"{task:9s} workers={workers}: {rate:6.1f} utterances/s, "
                f"{audio_rate:6.1f} s of audio/s"
            )
    if args.full:
        full_build(args.full)


if __name__ == "__main__":
    main()
