"""Device mesh, parameter partition rules and batch sharding.

Parameters are placed by an ordered list of `(regex, strategy)` rules searched for in the
'/'-joined parameter path (`re.search`, first match wins; a rule written for a param also
places its optimizer moments, whose paths end the same), one list per tree:

- `"replicate"`: a full copy on every device.
- `"fsdp"`: the largest dimension divisible by the `fsdp` axis is split over it (the
  big_vision "fsdp" strategy); a leaf with no divisible dimension is replicated.
- `"logical"`: the leaf's flax logical axis names (`nn.with_logical_partitioning`) mapped
  through `LOGICAL_RULES`; a leaf without names falls back to `"fsdp"`.
- a tuple of logical names, one per dimension (e.g. `("embed", "mlp")`), for modules that
  carry no annotations of their own.

Any dimension that its mesh axes do not divide is replicated instead of failing, so one
rule set serves every mesh shape.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# Logical axis name -> mesh axes, in the style of flax.linen.partitioning / MaxText.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("conv_in", None),
    ("conv_out", "fsdp"),
)
STRATEGIES = ("replicate", "fsdp", "logical")
Rules = Sequence[tuple[str, str | tuple[str | None, ...]]]


def create_mesh(axis_sizes: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh with axes `("data", "fsdp", "tensor")`; one size may be -1 (= the rest)."""
    unknown = set(axis_sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"config.mesh has unknown axes {sorted(unknown)}; allowed: {MESH_AXES}")
    devices = list(jax.devices() if devices is None else devices)
    sizes = [int(axis_sizes.get(name, 1)) for name in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(axis_sizes)}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"config.mesh: sizes must be positive or -1, got {dict(axis_sizes)}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"config.mesh {dict(axis_sizes)}: {len(devices)} devices are not divisible "
                f"by the fixed axes' product {known}"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"config.mesh {dict(axis_sizes)} needs {math.prod(sizes)} devices, "
            f"but jax.device_count() is {len(devices)}"
        )
    return jax.make_mesh(
        tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def num_batch_shards(mesh: Mesh) -> int:
    """Number of shards the batch dimension is split into (data x fsdp)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data and fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _axes_size(mesh: Mesh, axes: str | tuple[str, ...] | None) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(shape: Sequence[int], names: Sequence[str | None], mesh: Mesh) -> P:
    """PartitionSpec for logical dim names; replicates dims their mesh axes do not divide.

    Mesh axes of size 1 are left out, so specs read the same as on a trivial mesh.
    """
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match shape {tuple(shape)}")
    rules = dict(LOGICAL_RULES)
    used: set[str] = set()
    spec = []
    for dim, name in zip(shape, names, strict=True):
        axes = rules.get(name) if name is not None else None
        flat = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = _axes_size(mesh, flat)
        if size == 1 or used & set(flat) or dim % size:
            spec.append(None)
            continue
        used |= set(flat)
        spec.append(axes)
    return P(*spec)


def fsdp_spec(shape: Sequence[int], mesh: Mesh) -> P:
    """Split the largest dimension that the fsdp axis divides (ties: the last one)."""
    size = mesh.shape["fsdp"]
    if size == 1 or not shape:
        return P()
    candidates = [(d, i) for i, d in enumerate(shape) if d % size == 0]
    if not candidates:
        return P()
    _, axis = max(candidates)
    return P(*[("fsdp" if i == axis else None) for i in range(len(shape))])


def _leaf_spec(path: str, leaf: Any, mesh: Mesh, rules: Rules) -> P:
    names = leaf.names if isinstance(leaf, nn.Partitioned) else None
    shape = np.shape(leaf.value if isinstance(leaf, nn.Partitioned) else leaf)
    for pattern, strategy in rules:
        if not re.search(pattern, path):
            continue
        if strategy == "replicate":
            return P()
        if strategy == "fsdp" or (strategy == "logical" and names is None):
            return fsdp_spec(shape, mesh)
        if strategy == "logical":
            return logical_to_spec(shape, names, mesh)
        return logical_to_spec(shape, strategy, mesh)
    return P()


def validate_rules(rules: Rules, field: str) -> None:
    """Fail early, naming the config field, on a malformed rule list."""
    for rule in rules:
        if len(rule) != 2:
            raise ValueError(f"{field}: each rule is (regex, strategy), got {rule!r}")
        pattern, strategy = rule
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{field}: bad regex {pattern!r}: {e}") from e
        if isinstance(strategy, str) and strategy not in STRATEGIES:
            raise ValueError(f"{field}: unknown strategy {strategy!r}; use {STRATEGIES} or names")
        if not isinstance(strategy, str | tuple | list):
            raise ValueError(f"{field}: strategy must be a string or tuple, got {strategy!r}")


def _path_str(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def tree_shardings(tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a (possibly nn.Partitioned-boxed, possibly abstract) params tree.

    The result has the structure of the *unboxed* tree.
    """
    is_box = lambda x: isinstance(x, nn.Partitioned)
    specs = jax.tree_util.tree_map_with_path(
        lambda p, leaf: _leaf_spec(_path_str(p), leaf, mesh, rules), tree, is_leaf=is_box
    )
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def init_sharded(init_fn: Callable[[], Any], mesh: Mesh, rules: Rules) -> tuple[Any, Any]:
    """Run `init_fn` (no args, returns a params tree) directly into its shardings.

    Returns `(params, shardings)`; no full copy of the params ever lives on one device.
    """
    abstract = jax.eval_shape(init_fn)
    shardings = tree_shardings(abstract, mesh, rules)
    params = jax.jit(lambda: nn.unbox(init_fn()), out_shardings=shardings)()
    return params, shardings


def put_global(tree: Any, shardings: Any) -> Any:
    """Place host arrays (identical on every process) onto global shardings.

    Works on multi-host meshes, where `jax.device_put` of a host array cannot address
    other processes' devices.
    """

    def put(x: Any, sharding: NamedSharding) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree, shardings)


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying shardings: the input to `lower()` and to Orbax restore."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings
    )
