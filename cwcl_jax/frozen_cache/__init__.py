"""The frozen-tower embedding cache: run the frozen tower once per example, not per step.

The frozen tower never changes, and without frozen-side augmentation its input is a pure
function of the example. `build` runs it over the train split once and stores the raw
pooled output (what `frozen_features` returns: the CWCL weights use it, and a trainable
frozen-side head, if any, runs on it in the step) per example index. With
`config.frozen_cache.enabled` the trainer opens (or first builds) the cache, the input
pipeline joins `batch["frozen_raw"]` by example index without decoding the frozen side,
and the train step skips the frozen forward pass. Zero-shot evaluation still runs the
frozen tower on class prompts. See docs/frozen_cache.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging
from ml_collections import config_dict

from cwcl_jax.frozen_cache import identity, store
from cwcl_jax.frozen_cache.builder import build
from cwcl_jax.frozen_cache.store import FrozenCache, open_cache


def default_config() -> ml_collections.ConfigDict:
    """`config.frozen_cache` fields."""
    return ml_collections.ConfigDict(
        {
            "enabled": False,
            "dir": config_dict.placeholder(str),  # None: <workdir>/frozen_cache
            "batch_size": config_dict.placeholder(int),  # None: batch_size / accum_steps
            "chunk_steps": 10,  # batches per chunk: what an interrupted build may redo
            "verify": True,  # re-hash the embeddings when opening (seconds per GB)
        }
    )


def check_config(config: ml_collections.ConfigDict) -> None:
    """ValueError for settings a cache cannot serve (before anything is built or read)."""
    cache = config.frozen_cache
    if not cache.enabled:
        return
    if cache.chunk_steps < 1:
        raise ValueError(f"config.frozen_cache.chunk_steps must be >= 1, got {cache.chunk_steps}")
    augmentation = [f for f in ("augment", "flip") if config.data[f]]
    if config.model.frozen.modality == "image" and augmentation:
        fields = ", ".join(f"data.{f}=True" for f in augmentation)
        raise ValueError(
            f"config.frozen_cache.enabled with {fields}: the frozen tower's images are "
            "augmented anew every step, but a cache holds one embedding per example. "
            "Turn the augmentation off or disable config.frozen_cache"
        )


def cache_dir(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
    return Path(config.frozen_cache.dir or os.path.join(workdir, "frozen_cache")).expanduser()


def open_or_build(experiment: Any, frozen_params: Any, workdir: str | os.PathLike) -> FrozenCache:
    """The run's cache, checked against its config; built first when missing or unfinished."""
    directory = cache_dir(experiment.config, workdir)
    manifest = store.read_manifest(directory)
    if manifest is None or manifest.get("state") != "complete":
        logging.info(
            "No complete frozen cache in %s: building it before training (the run's "
            "end-to-end time includes the build).",
            directory,
        )
    return build(experiment, frozen_params, directory)  # None only with max_chunks


__all__ = [
    "FrozenCache",
    "build",
    "cache_dir",
    "check_config",
    "default_config",
    "identity",
    "open_cache",
    "open_or_build",
    "store",
]
