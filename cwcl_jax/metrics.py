"""Training metrics at the edge: metrics.jsonl, TensorBoard events, progress on stdout.

Only process 0 writes; other processes keep a silent writer so the loop has no branches.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from absl import logging

_BAR_WIDTH = 24
# Shown in the progress bar / log line, in this order, when present.
_HEADLINE = ("loss", "accuracy_t2f", "accuracy_f2t", "temperature", "examples_per_sec")


class Throughput:
    """Step time and examples/s between two logging points."""

    def __init__(self, global_batch_size: int):
        self.global_batch_size = global_batch_size
        self._start = time.perf_counter()
        self._steps = 0

    def tick(self) -> None:
        self._steps += 1

    def read_and_reset(self) -> dict[str, float]:
        now = time.perf_counter()
        elapsed, steps = now - self._start, max(self._steps, 1)
        self._start, self._steps = now, 0
        return {
            "step_time_sec": elapsed / steps,
            "examples_per_sec": self.global_batch_size * steps / max(elapsed, 1e-9),
        }


class MetricsWriter:
    """Writes one record per logged step to `workdir/metrics.jsonl` and TensorBoard."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        total_steps: int,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        stream: IO[str] | None = None,
    ):
        self.total_steps = total_steps
        self.enabled = enabled
        self._stream = stream if stream is not None else sys.stdout
        self._bar = enabled and self._stream.isatty()
        self._jsonl = None
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
            if tensorboard:
                self._tb = _TensorBoard(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record scalars for `step` (values: python or numpy scalars)."""
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in metrics.items()}
        record = {"step": int(step), **{k: _json_number(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.write(step, scalars)
        self._show(step, scalars)

    def _show(self, step: int, scalars: Mapping[str, float]) -> None:
        shown = " ".join(f"{k}={scalars[k]:.4g}" for k in _HEADLINE if k in scalars)
        if not self._bar:
            logging.info("step %d/%d %s", step, self.total_steps, shown)
            return
        done = int(_BAR_WIDTH * step / max(self.total_steps, 1))
        bar = "#" * done + "." * (_BAR_WIDTH - done)
        end = "\n" if step >= self.total_steps else ""
        self._stream.write(f"\r[{bar}] {step}/{self.total_steps} {shown}\033[K{end}")
        self._stream.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._bar:
            self._stream.write("\n")


def _json_number(x: float) -> float | str:
    """JSON has no NaN/inf: write them as strings so the file stays valid JSON."""
    return x if math.isfinite(x) else str(x)


class _TensorBoard:
    """Scalar events TensorBoard reads, written with TF core only.

    `tf.summary.scalar` needs the separate `tensorboard` package; `tf.summary.write` with
    the "scalars" plugin metadata produces the same events without it.
    """

    def __init__(self, logdir: str):
        import tensorflow as tf  # deferred: TF import costs seconds and only process 0 needs it
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        self._writer = tf.summary.create_file_writer(logdir)
        plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        self._metadata = summary_pb2.SummaryMetadata(plugin_data=plugin)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        with self._writer.as_default():
            for name, value in scalars.items():
                tensor = self._tf.constant(value, self._tf.float32)
                self._tf.summary.write(name, tensor, step=step, metadata=self._metadata)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
