"""Orbax checkpoints of the train state and the data-iterator state; preemption handling.

Each step directory holds three items: `state` (the sharded train state, StandardSave),
`data` (the data iterator's JSON state) and `meta` (the config and an integrity
fingerprint). Saves are asynchronous; the last `keep` steps are kept.

Damaged checkpoints: restore recomputes a fingerprint of every restored array and
compares it with the one recorded at save time. A step that fails to read or whose
fingerprint differs is moved aside to `damaged_<step>` with a warning and the previous
step is tried; if no step is valid the run stops with an error naming the directory.
That fallback is for resuming training only: a read-only Checkpointer (`--mode=eval`)
restores exactly the step asked for, or raises an error naming the path, and never
renames, creates or deletes anything.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils


class CheckpointError(RuntimeError):
    """A checkpoint directory or step is missing, or no checkpoint could be restored intact."""


def _leaf_bits(x: jax.Array) -> jax.Array:
    """The raw bits of an array as a flat uint32 vector (float16/bf16/int8 widen)."""
    x = jnp.ravel(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    width = x.dtype.itemsize
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[width]
    bits = jax.lax.bitcast_convert_type(x, unsigned)
    return bits.reshape(-1).astype(jnp.uint32)


@jax.jit
def _fingerprint(tree: Any) -> jax.Array:
    """Position-weighted wrapping sums of each leaf's bits: `[num_leaves, 2]` uint32."""

    def leaf(x: jax.Array) -> jax.Array:
        bits = _leaf_bits(x)
        position = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + 1
        return jnp.stack([bits.sum(dtype=jnp.uint32), (bits * position).sum(dtype=jnp.uint32)])

    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((0, 2), jnp.uint32)
    return jnp.stack([leaf(x) for x in leaves])


def fingerprint(tree: Any) -> list[list[int]]:
    """Mesh-independent checksum of a pytree of (possibly sharded) arrays."""
    return np.asarray(_fingerprint(tree)).tolist()


class Checkpointer:
    """Saves and restores `(train_state, data_state)` under `directory`."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 3,
        async_save: bool = True,
        read_only: bool = False,
    ):
        """read_only: open an existing directory for `restore` only (evaluation); it must
        exist, and nothing in it is created, renamed or deleted."""
        if keep < 1:
            raise ValueError(f"checkpoint keep must be >= 1, got {keep}")
        # Orbax refuses relative paths (mid-save, in a background thread): resolve local
        # ones here, so `--workdir runs/x` works; remote paths (gs://...) are absolute.
        directory = os.fspath(directory)
        self.directory = epath.Path(directory if "://" in directory else os.path.abspath(directory))
        self.read_only = read_only
        if read_only:
            if not self.directory.is_dir():
                raise CheckpointError(f"no checkpoint directory {self.directory}")
            options = ocp.CheckpointManagerOptions(
                read_only=True, create=False, save_interval_steps=0
            )
        else:
            options = ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.LatestN(keep),
                enable_async_checkpointing=async_save,
                create=True,
            )
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "data", "meta"), options=options
        )

    def all_steps(self) -> list[int]:
        """Saved steps, ascending (damaged steps moved aside are not listed)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: Mapping[str, Any], config: Mapping) -> None:
        """Start an asynchronous save of `step` (returns once arrays are copied to host)."""
        meta = {"step": step, "fingerprint": fingerprint(state), "config": dict(config)}
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(dict(data_state)),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """Newest intact checkpoint as `(step, state, data_state)`, or None if there is none.

        `abstract_state` carries the target shardings, so a different mesh can restore.
        """
        failures = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                return step, *self._restore_verified(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - any read failure means "damaged"
                failures.append(f"step {step}: {type(e).__name__}: {e}")
                logging.warning(
                    "Checkpoint %s is damaged (%s); falling back to the previous one.",
                    self.directory / str(step),
                    e,
                )
                self._move_aside(step)
        if failures:
            raise CheckpointError(
                f"No intact checkpoint in {self.directory}:\n  " + "\n  ".join(failures)
            )
        return None

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Exactly `step` as `(state, data_state)`; never falls back to another step.

        CheckpointError naming the path when the directory holds no checkpoint, `step` is
        not among the saved ones (they are listed), or the step is damaged (left as is).
        """
        self.resolve_step(step)
        try:
            return self._restore_verified(step, abstract_state)
        except Exception as e:  # noqa: BLE001 - any read failure means "damaged"
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} is damaged "
                f"({type(e).__name__}: {e}); saved steps: {self.all_steps()}"
            ) from e

    def resolve_step(self, step: int | None) -> int:
        """`step`, or the latest when None, after checking that it was saved."""
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"{self.directory} holds no checkpoint")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise CheckpointError(
                f"no checkpoint of step {step} in {self.directory}; available steps: {steps}"
            )
        return step

    def _restore_verified(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        expected = restored["meta"]["fingerprint"]
        if fingerprint(restored["state"]) != expected:
            raise CheckpointError(f"fingerprint mismatch in {self.directory / str(step)}")
        return restored["state"], restored["data"]

    def _move_aside(self, step: int) -> None:
        """Rename a damaged step so the run can later save that step number again."""
        if self.read_only:
            raise CheckpointError(f"{self.directory} is open read-only; not renaming step {step}")
        if jax.process_index() == 0:
            src = self.directory / str(step)
            if src.exists():
                src.rename(self.directory / f"damaged_{step}")
        multihost_utils.sync_global_devices(f"cwcl_move_aside_{step}")
        self._manager.reload()

    def wait(self) -> None:
        """Block until the pending asynchronous save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


class PreemptionWatcher:
    """Tells the loop when to checkpoint and stop because of a preemption notice (SIGTERM).

    Multi-process runs use JAX's coordination service, which agrees on one step for all
    hosts; a single process installs a SIGTERM handler that only sets a flag, so the
    save happens at the next step boundary.
    """

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._multi_process = jax.process_count() > 1
        self._previous = None
        if not self._multi_process and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self._flag.set())

    def reached(self, step: int) -> bool:
        if self._multi_process:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._flag.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
