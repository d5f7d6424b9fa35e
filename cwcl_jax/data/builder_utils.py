"""Shared pieces of this package's TFDS builders: parallel loading, bad-record handling."""

from __future__ import annotations

import concurrent.futures
import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from absl import logging

_In = TypeVar("_In")
_Out = TypeVar("_Out")

BAD_RECORD_MODES = ("skip", "raise")
_LOGGED_BAD_RECORDS = 20  # Logged one by one; the rest only counted.


def default_workers() -> int:
    """Worker threads for builders: one per CPU core (work is in subprocesses or C code)."""
    return max(1, os.cpu_count() or 1)


def ordered_parallel_map(
    fn: Callable[[_In], _Out],
    items: Iterable[_In],
    *,
    workers: int | None = None,
    chunk_size: int = 256,
) -> Iterator[_Out]:
    """Yields fn(item) in input order, computed by a thread pool.

    Chunks bound the results held in memory when the consumer (the TFDS writer) is slower
    than the workers. Threads suffice: the heavy parts (espeak-ng subprocesses, numpy, tf
    decoding) release the GIL.
    """
    workers = workers or default_workers()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        iterator = iter(items)
        while chunk := list(itertools.islice(iterator, chunk_size)):
            yield from pool.map(fn, chunk)


def load_or_reason(load: Callable[[str], _Out], path: str) -> tuple[_Out | None, str | None]:
    """(load(path), None), or (None, why not) for a missing file or a ValueError."""
    if not os.path.isfile(path):
        return None, f"file not found: {path}"
    try:
        return load(path), None
    except ValueError as e:
        return None, str(e)


def check_bad_records_mode(mode: str) -> str:
    """Returns `mode` if it is "skip" or "raise", else raises ValueError naming bad_records."""
    if mode not in BAD_RECORD_MODES:
        raise ValueError(f"bad_records must be one of {BAD_RECORD_MODES}, got {mode!r}")
    return mode


class BadRecords:
    """Skips and counts bad records, or raises on the first one, by `mode`."""

    def __init__(self, mode: str):
        self.mode = check_bad_records_mode(mode)
        self.count = 0
        self.first: list[str] = []

    def report(self, location: str, reason: str) -> None:
        """location: "file:line" of the record, plus its media path where there is one."""
        message = f"{location}: {reason}"
        if self.mode == "raise":
            raise ValueError(f"bad record at {message} (bad_records='skip' skips such records)")
        self.count += 1
        if len(self.first) < _LOGGED_BAD_RECORDS:
            self.first.append(message)
            logging.warning("Skipping bad record %s", message)

    def summary(self) -> dict:
        """JSON-able {"count", "first"} for the dataset's metadata."""
        return {"count": self.count, "first": list(self.first)}


def print_build_summary(builder) -> None:
    """What a builder command line prints when done: examples per split, bad records."""
    for split, info in builder.info.splits.items():
        print(f"{split}: {info.num_examples} examples")
    print(f"skipped bad records: {builder.info.metadata.get('bad_records', {'count': 0})['count']}")
