"""Building a frozen cache: the frozen tower over the train split once, resumably.

The split is read by the input pipeline in evaluation mode (every example once, in order,
the last batch padded and marked in `valid`), with only the frozen modality decoded. The
frozen tower runs jit-compiled on the run's mesh; each process keeps the rows of its own
local batches and writes them, one chunk of `chunk_steps` batches at a time, with a
progress record. A restarted build continues after the last chunk every process finished,
so it ends with the same bytes as an uninterrupted one. Then each process assembles its
shard, and process 0 hashes the content and marks the manifest complete.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from cwcl_jax.data import pipeline, sources
from cwcl_jax.frozen_cache import identity, store
from cwcl_jax.models import frozen_features
from cwcl_jax.sharding import BATCH_AXES

MODALITIES = ("image", "text", "speech")


def build_batch_size(config: ml_collections.ConfigDict) -> int:
    """frozen_cache.batch_size, or the training micro-batch (batch_size / accum_steps)."""
    size = config.frozen_cache.batch_size or config.batch_size // config.accum_steps
    if size <= 0:
        raise ValueError(f"config.frozen_cache.batch_size must be positive, got {size}")
    return size


def frozen_only_data(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """config.data reading just the frozen modality (no labels), for the build."""
    data = copy.deepcopy(config.data)
    for modality in MODALITIES:
        if modality != config.model.frozen.modality:
            data.features[modality] = None
    data.features.labels = ()
    return data


def open_train_split(config: ml_collections.ConfigDict) -> sources.Split:
    data = config.data
    return sources.open_split(
        data.name, data.train_split, data_dir=data.data_dir, prepare=data.prepare,
        manual_dir=data.manual_dir,
    )  # fmt: skip


def local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in global row order."""
    shards = {s.index[0].start or 0: s.data for s in array.addressable_shards}
    return np.concatenate([np.asarray(shards[start]) for start in sorted(shards)])


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"cwcl_jax.frozen_cache {name}")


class _Progress:
    """A one-line bar on a terminal, log lines otherwise (process 0 only)."""

    def __init__(self, total: int, done: int, batch_size: int):
        self.total, self.start_done, self.batch_size = total, done, batch_size
        self.start = time.perf_counter()
        self.enabled = jax.process_index() == 0
        self.bar = self.enabled and sys.stdout.isatty()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        rate = (done - self.start_done) * self.batch_size / max(elapsed, 1e-9)
        eta = (self.total - done) * self.batch_size / max(rate, 1e-9)
        line = f"frozen cache: {done}/{self.total} batches, {rate:.0f} examples/s, ETA {eta:.0f} s"
        if self.bar:
            filled = 24 * done // self.total
            print(f"\r[{'#' * filled}{'.' * (24 - filled)}] {line}", end="", flush=True)
            if done == self.total:
                print(flush=True)
        else:
            logging.info(line)


def build(
    experiment: Any,
    frozen_params: Any,
    directory: str | Path,
    *,
    max_chunks: int | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> store.FrozenCache | None:
    """Builds (or finishes) the cache of `experiment`'s train split in `directory`.

    Args:
      experiment: a `cwcl_jax.experiment.Experiment` (config, mesh, frozen tower).
      frozen_params: the frozen tower's params, placed with `experiment.frozen_shardings`.
      directory: the cache directory; a complete matching cache there is just opened.
      max_chunks: stop after writing this many chunks in this call (returns None), as an
        interruption would; a later call resumes.
      on_chunk: called with each chunk number once it is on disk (progress, tests).
    Returns the opened cache, or None when stopped by `max_chunks`.
    """
    config = experiment.config
    directory = Path(directory)
    split = open_train_split(config)
    expected = identity.describe(config, split, experiment.parts.model.frozen_dim)
    batch_size = build_batch_size(config)
    layout = {
        "global_batch_size": batch_size,
        "process_count": jax.process_count(),
        "chunk_steps": config.frozen_cache.chunk_steps,
    }
    manifest = store.read_manifest(directory)
    if manifest is not None:
        store.check_identity(expected, manifest, directory)
        if manifest.get("state") == "complete":
            return store.open_cache(directory, expected, verify=config.frozen_cache.verify)
        store.check_identity({"build": layout}, manifest, directory)
    elif jax.process_index() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        store.write_json(directory / store.MANIFEST, {**expected, "state": "building",
                                                      "build": layout})  # fmt: skip
    _sync("started")
    finished = _write_chunks(experiment, frozen_params, directory, layout, max_chunks, on_chunk)
    if not finished:
        return None
    return _finish(directory, expected, layout)


def _write_chunks(experiment, frozen_params, directory, layout, max_chunks, on_chunk) -> bool:
    """Runs the tower over the batches not yet on disk; False when stopped by max_chunks."""
    config, mesh = experiment.config, experiment.mesh
    modality = config.model.frozen.modality
    batches = pipeline.make_pipeline(
        frozen_only_data(config), split=config.data.train_split,
        global_batch_size=layout["global_batch_size"], mesh=mesh, seed=config.seed,
        tokenizer=experiment.frozen_processor if modality == "text" else None, train=False,
    )  # fmt: skip
    steps, chunk_steps = len(batches), layout["chunk_steps"]
    num_chunks = math.ceil(steps / chunk_steps)
    start = min(store.chunks_done(directory, p) for p in range(layout["process_count"]))
    module = experiment.parts.frozen_module
    forward = jax.jit(
        lambda params, inputs: frozen_features(module, params, inputs),
        out_shardings=pipeline.batch_sharding(mesh, BATCH_AXES, layout["global_batch_size"]),
    )
    if start < num_chunks:
        batches.set_state({"seed": config.seed, "epoch": 0, "step_in_epoch": start * chunk_steps,
                           "global_batch_size": layout["global_batch_size"]})  # fmt: skip
    progress = _Progress(steps, start * chunk_steps, layout["global_batch_size"])
    for chunk in range(start, num_chunks):
        if max_chunks is not None and chunk - start >= max_chunks:
            return False
        indices, embeddings = [], []
        for _ in range(min(chunk_steps, steps - chunk * chunk_steps)):
            batch = next(batches)
            rows = local_rows(forward(frozen_params, batch[modality]))
            valid = local_rows(batch["valid"])
            indices.append(local_rows(batch["index"])[valid])
            embeddings.append(rows[valid])
        store.write_chunk(directory, jax.process_index(), chunk,
                          np.concatenate(indices), np.concatenate(embeddings))  # fmt: skip
        progress.update(min((chunk + 1) * chunk_steps, steps))
        if on_chunk is not None:
            on_chunk(chunk)
    store.assemble_shard(directory, jax.process_index(), layout["process_count"], num_chunks,
                         experiment.parts.model.frozen_dim)  # fmt: skip
    return True


def _finish(directory: Path, expected: dict, layout: dict) -> store.FrozenCache:
    """Process 0 hashes every shard and marks the manifest complete; all then open it."""
    _sync("shards written")
    count = layout["process_count"]
    if jax.process_index() == 0:
        manifest = {**expected, "build": layout, "shards": store.shard_entries(directory, count)}
        content = store.FrozenCache(directory, manifest).content_sha256()
        store.write_json(directory / store.MANIFEST,
                         {**manifest, "state": "complete", "content_sha256": content})  # fmt: skip
        store.remove_build_files(directory, count)
        logging.info("Frozen cache complete in %s (content sha256 %s).", directory, content)
    _sync("complete")
    return store.open_cache(directory, expected, verify=False)
