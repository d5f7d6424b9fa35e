"""Plumbing of the sharded losses: each device owns N/d rows and gathers the columns.

The loss math lives in cwcl_jax.losses / cwcl_jax.losses_blockwise; this module only
splits the batch over mesh axes, gathers, and sums the per-device row sums.
"""

import math
from collections.abc import Callable, Sequence

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P


def check_batch_axes(mesh: Mesh, batch_axes: Sequence[str]) -> tuple[str, ...]:
    """The batch axes as a tuple; ValueError when one is not an axis of the mesh."""
    batch_axes = tuple(batch_axes)
    missing = [axis for axis in batch_axes if axis not in mesh.axis_names]
    if not batch_axes or missing:
        raise ValueError(
            f"batch_axes {batch_axes} must be a non-empty subset of the mesh axes "
            f"{mesh.axis_names}; missing: {missing}"
        )
    return batch_axes


def batch_shards(mesh: Mesh, batch_axes: tuple[str, ...]) -> int:
    """Number of devices the batch is split over."""
    return math.prod(mesh.shape[axis] for axis in batch_axes)


def check_divisible(batch: int, mesh: Mesh, batch_axes: tuple[str, ...]) -> None:
    """ValueError unless the batch splits evenly over the batch axes."""
    shards = batch_shards(mesh, batch_axes)
    if batch % shards:
        sizes = {axis: mesh.shape[axis] for axis in batch_axes}
        raise ValueError(
            f"batch size {batch} does not divide across the {shards} devices of mesh axes "
            f"{sizes}; use a global batch that is a multiple of {shards}"
        )


def shard_rows(
    per_shard: Callable, mesh: Mesh, batch_axes: tuple[str, ...], n_sharded: int, n_replicated: int
) -> Callable:
    """shard_map of per_shard(row_offset, gathered, local, replicated) summed over devices.

    The wrapped function takes n_sharded arrays split on their first axis over batch_axes
    followed by n_replicated replicated arrays. per_shard gets the global index of its
    first row, the all-gathered sharded arrays (tiled, [N, ...]), its own rows [N/d, ...]
    and the replicated arrays; whatever pytree of sums it returns is psum-ed over the
    batch axes, so the result is replicated.
    """

    def body(*args):
        local, replicated = args[:n_sharded], args[n_sharded:]
        gathered = tuple(jax.lax.all_gather(x, batch_axes, tiled=True) for x in local)
        # Per-device copies of the replicated scalars: their gradients stay per-device
        # inside, and the transpose of this cast sums them over devices exactly once.
        replicated = tuple(jax.lax.pcast(x, batch_axes, to="varying") for x in replicated)
        row_offset = jax.lax.axis_index(batch_axes) * local[0].shape[0]
        sums = per_shard(row_offset, gathered, local, replicated)
        return jax.lax.psum(sums, batch_axes)

    in_specs = (P(batch_axes),) * n_sharded + (P(),) * n_replicated
    return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=P())
