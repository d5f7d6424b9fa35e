"""Sharded, padded eval batches -> host numpy arrays with the padding dropped.

The eval iterator yields *global* batches (jax.Arrays sharded over the mesh's batch axes,
spread over all processes) with a `valid` mask [B] whose False rows are padding at the
end. Each process runs the jitted embedding on its own shard; `process_allgather` then
gives every process the full global arrays, so all processes compute identical metrics
and no further reduction is needed (only process 0 writes files).
"""

from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

Batch = dict[str, Any]


def to_host(tree: Any) -> Any:
    """Global values of every leaf as numpy arrays, identical on every process.

    jax.Array leaves are all-gathered across processes; numpy leaves are taken as already
    global, which is only meaningful with a single process.
    """

    def gather(path, leaf):
        if isinstance(leaf, jax.Array):
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        if jax.process_count() > 1:
            raise ValueError(
                f"eval batch entry {jax.tree_util.keystr(path)} is a host numpy array; with "
                f"{jax.process_count()} processes it must be a global jax.Array"
            )
        return np.asarray(leaf)

    return jax.tree_util.tree_map_with_path(gather, tree)


def valid_rows(batch: Batch, batch_size: int, valid_key: str) -> np.ndarray:
    """The batch's padding mask as bool [B]; all True when the batch has no mask."""
    if valid_key not in batch:
        return np.ones((batch_size,), bool)
    valid = to_host(batch[valid_key]).astype(bool)
    if valid.shape != (batch_size,):
        raise ValueError(
            f"eval batch {valid_key!r} has shape {valid.shape}, expected ({batch_size},)"
        )
    return valid


def collect(
    step: Callable[[Batch], Any],
    batches: Iterable[Batch],
    *,
    extra: Callable[[Batch], Any] = lambda batch: {},
    valid_key: str = "valid",
) -> Any:
    """Runs `step` on every batch and concatenates its outputs over the valid rows.

    step: batch -> pytree of [B, ...] arrays (normally a jitted embedding function);
    extra: batch -> pytree of [B, ...] arrays taken from the batch as is (e.g. labels).
    Returns {"outputs": tree of [N, ...], "extra": tree of [N, ...]} as numpy, where N is
    the number of valid rows over all batches and all processes.
    """
    pieces = []
    pending = None
    # Dispatch batch i+1 before pulling batch i to the host, so device work overlaps the
    # transfer and gather of the previous batch.
    for batch in batches:
        launched = (step(batch), extra(batch), batch)
        if pending is not None:
            pieces.append(_host_rows(*pending, valid_key))
        pending = launched
    if pending is not None:
        pieces.append(_host_rows(*pending, valid_key))
    if not pieces:
        raise ValueError("the eval iterator yielded no batches")
    return jax.tree.map(lambda *rows: np.concatenate(rows), *pieces)


def _host_rows(outputs: Any, extra: Any, batch: Batch, valid_key: str) -> dict[str, Any]:
    tree = to_host({"outputs": outputs, "extra": extra})
    leaves = jax.tree.leaves(tree)
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"eval outputs must all be [batch, ...]; got leading sizes {sizes}")
    valid = valid_rows(batch, sizes.pop(), valid_key)
    return jax.tree.map(lambda leaf: leaf[valid], tree)
