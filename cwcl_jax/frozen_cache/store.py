"""The on-disk layout of a frozen cache, and read access to it by example index.

  DIR/manifest.json                    identity, state ("building" | "complete"), build
                                       layout, shards, content hash
  DIR/progress-PPPPP.json              {"chunks": k}: chunks 0..k-1 of process P are on disk
  DIR/chunks/PPPPP/CCCCCC.{indices,embeddings}.npy   one chunk of batches (while building)
  DIR/indices-PPPPP-of-NNNNN.npy       int32 [rows]: the example index of each row
  DIR/embeddings-PPPPP-of-NNNNN.npy    float32 [rows, dim]: the frozen tower's raw output

Every file is written to a temporary name and renamed, so a killed build leaves whole
files only. The content hash runs over (index, embedding) in example-index order, so it
does not depend on how many processes built the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cwcl_jax.data.preprocess import BadRecord
from cwcl_jax.frozen_cache import identity

MANIFEST = "manifest.json"
_HASH_ROWS = 4096


def write_json(path: Path, value: Mapping[str, Any]) -> None:
    """Atomic, deterministic JSON (sorted keys): equal content gives equal bytes."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def read_manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete {directory} to rebuild") from e


def shard_files(process: int, count: int) -> tuple[str, str]:
    """(indices file, embeddings file) of one process's shard."""
    suffix = f"{process:05d}-of-{count:05d}.npy"
    return f"indices-{suffix}", f"embeddings-{suffix}"


def _chunk_paths(directory: Path, process: int, chunk: int) -> tuple[Path, Path]:
    folder = directory / "chunks" / f"{process:05d}"
    return folder / f"{chunk:06d}.indices.npy", folder / f"{chunk:06d}.embeddings.npy"


def _progress_path(directory: Path, process: int) -> Path:
    return directory / f"progress-{process:05d}.json"


def chunks_done(directory: Path, process: int) -> int:
    path = _progress_path(directory, process)
    return json.loads(path.read_text())["chunks"] if path.is_file() else 0


def write_chunk(
    directory: Path, process: int, chunk: int, indices: np.ndarray, embeddings: np.ndarray
) -> None:
    """Saves one chunk (int32 `[rows]`, float32 `[rows, dim]`), then records it as done."""
    index_path, embedding_path = _chunk_paths(directory, process, chunk)
    index_path.parent.mkdir(parents=True, exist_ok=True)
    _save_npy(index_path, indices.astype(np.int32))
    _save_npy(embedding_path, embeddings.astype(np.float32))
    write_json(_progress_path(directory, process), {"chunks": chunk + 1})


def assemble_shard(directory: Path, process: int, count: int, num_chunks: int, dim: int) -> None:
    """Concatenates a process's chunks into its two shard files, one chunk in memory at a time."""
    chunks = [_chunk_paths(directory, process, c) for c in range(num_chunks)]
    indices = np.concatenate([np.load(i) for i, _ in chunks]) if chunks else np.zeros(0, np.int32)
    index_name, embedding_name = shard_files(process, count)
    tmp = directory / (embedding_name + ".tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(indices), dim))
    row = 0
    for _, embedding_path in chunks:
        block = np.load(embedding_path)
        out[row : row + len(block)] = block
        row += len(block)
    out.flush()
    del out
    os.replace(tmp, directory / embedding_name)
    _save_npy(directory / index_name, indices.astype(np.int32))


def shard_entries(directory: Path, count: int) -> list[dict[str, Any]]:
    entries = []
    for process in range(count):
        index_name, embedding_name = shard_files(process, count)
        rows = np.load(directory / index_name, mmap_mode="r").shape[0]
        entries.append({"indices": index_name, "embeddings": embedding_name, "rows": int(rows)})
    return entries


def remove_build_files(directory: Path, count: int) -> None:
    """The chunks and progress records, once the complete manifest is written."""
    shutil.rmtree(directory / "chunks", ignore_errors=True)
    for process in range(count):
        _progress_path(directory, process).unlink(missing_ok=True)


class FrozenCache:
    """Read access by example index to a complete cache (memory-mapped shards).

    `lookup(index)` is what the input pipeline calls per example; `rows(indices)` reads many.
    """

    def __init__(self, directory: str | os.PathLike, manifest: Mapping[str, Any]):
        self.directory = Path(directory)
        self.manifest = dict(manifest)
        self.modality: str = manifest["frozen"]["modality"]
        self.dim: int = manifest["embedding"]["dim"]
        self.num_examples: int = manifest["dataset"]["num_examples"]
        self._shards: list[np.ndarray] = []
        self._shard_of = np.full(self.num_examples, -1, np.int32)
        self._row_of = np.zeros(self.num_examples, np.int64)
        for number, entry in enumerate(manifest["shards"]):
            self._add_shard(number, entry)

    def _add_shard(self, number: int, entry: Mapping[str, Any]) -> None:
        index_path = self.directory / entry["indices"]
        embedding_path = self.directory / entry["embeddings"]
        try:
            indices = np.load(index_path)
            embeddings = np.load(embedding_path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise ValueError(f"frozen cache shard unreadable ({e}); rebuild the cache") from e
        expected = ((entry["rows"],), (entry["rows"], self.dim))
        if (indices.shape, embeddings.shape) != expected or embeddings.dtype != np.float32:
            raise ValueError(
                f"frozen cache shard {embedding_path}: shapes {indices.shape}, "
                f"{embeddings.shape} {embeddings.dtype}; the manifest says {expected} float32"
            )
        if len(indices) and (indices.min() < 0 or indices.max() >= self.num_examples):
            raise ValueError(f"{index_path}: example index outside [0, {self.num_examples})")
        if np.any(self._shard_of[indices] >= 0) or len(np.unique(indices)) != len(indices):
            raise ValueError(f"{index_path}: an example index appears twice in the cache")
        self._shard_of[indices] = number
        self._row_of[indices] = np.arange(len(indices))
        self._shards.append(embeddings)

    def present(self) -> np.ndarray:
        """Sorted example indices that have an embedding (bad records at build time do not)."""
        return np.flatnonzero(self._shard_of >= 0)

    def lookup(self, index: int) -> np.ndarray:
        """float32 `[dim]` of example `index`; BadRecord when the record was bad at build
        time, so the pipeline replaces it as it would have on the fly."""
        if not 0 <= index < self.num_examples:
            raise IndexError(f"example index {index} outside [0, {self.num_examples})")
        shard = self._shard_of[index]
        if shard < 0:
            raise BadRecord("no frozen embedding in the cache (bad record when it was built)")
        return np.array(self._shards[shard][self._row_of[index]])

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """float32 `[n, dim]` for present example `indices` `[n]`."""
        indices = np.asarray(indices, np.int64)
        out = np.empty((len(indices), self.dim), np.float32)
        shards = self._shard_of[indices]
        if np.any(shards < 0):
            raise KeyError(f"no cached embedding for indices {indices[shards < 0][:10].tolist()}")
        for shard in np.unique(shards):
            mine = shards == shard
            out[mine] = self._shards[shard][self._row_of[indices[mine]]]
        return out

    def content_sha256(self) -> str:
        """sha256 over (int64 index, float32 row) in example-index order."""
        digest = hashlib.sha256()
        present = self.present()
        for start in range(0, len(present), _HASH_ROWS):
            block = present[start : start + _HASH_ROWS]
            digest.update(block.astype("<i8").tobytes())
            digest.update(self.rows(block).astype("<f4").tobytes())
        return digest.hexdigest()


def open_cache(
    directory: str | os.PathLike, expected: Mapping[str, Any] | None = None, *, verify: bool = True
) -> FrozenCache:
    """A complete cache, checked against the `expected` identity (`identity.describe`).

    ValueError when there is no complete cache, when a field differs (all are named,
    expected vs found), or (verify=True) when the embeddings no longer hash to the
    manifest's content hash.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise ValueError(f"no frozen cache in {directory} (no {MANIFEST}); build it first")
    if expected is not None:
        check_identity(expected, manifest, directory)
    if manifest.get("state") != "complete":
        raise ValueError(
            f"the frozen cache in {directory} is incomplete (an interrupted build); run the "
            "build again to finish it: python -m cwcl_jax.frozen_cache --config ..."
        )
    cache = FrozenCache(directory, manifest)
    if verify and cache.content_sha256() != manifest["content_sha256"]:
        raise ValueError(
            f"frozen cache {directory}: the embeddings do not hash to the manifest's "
            "content_sha256 (files changed or damaged); delete the directory to rebuild"
        )
    return cache


def check_identity(expected: Mapping[str, Any], found: Mapping[str, Any], directory: Path) -> None:
    """ValueError naming every identity field that differs (never a silent mix)."""
    fields = {k: found.get(k) for k in expected}
    problems = identity.mismatches(expected, fields)
    if problems:
        raise ValueError(
            f"frozen cache {directory} does not match this run:\n  "
            + "\n  ".join(problems)
            + f"\nDelete {directory} or set config.frozen_cache.dir to another directory."
        )
