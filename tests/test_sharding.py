"""Mesh construction, partition rules (with the divisibility fallback), sharded init."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cwcl_jax import sharding


@pytest.mark.parametrize(
    "axes, shape",
    [
        ({"data": -1}, (8, 1, 1)),
        ({"data": -1, "fsdp": 2}, (4, 2, 1)),
        ({"data": 2, "fsdp": -1, "tensor": 2}, (2, 2, 2)),
        ({"data": 1, "fsdp": 8, "tensor": 1}, (1, 8, 1)),
    ],
)
def test_create_mesh_shapes(axes, shape):
    mesh = sharding.create_mesh(axes)
    assert tuple(mesh.shape.values()) == shape
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
    "axes, match",
    [
        ({"data": 3}, r"needs 3 devices, but jax.device_count\(\) is 8"),
        ({"data": -1, "fsdp": 3}, "not divisible by the fixed axes' product 3"),
        ({"data": -1, "fsdp": -1}, "at most one axis may be -1"),
        ({"model": 8}, r"unknown axes \['model'\]"),
        ({"data": 0, "fsdp": -1}, "must be positive or -1"),
    ],
)
def test_create_mesh_errors(axes, match):
    with pytest.raises(ValueError, match=match):
        sharding.create_mesh(axes)


def test_logical_to_spec_maps_and_falls_back():
    mesh = sharding.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert sharding.logical_to_spec((8, 16), ("embed", "mlp"), mesh) == P("fsdp", "tensor")
    # 7 is not divisible by fsdp=2: that dim is replicated, the other keeps its axis.
    assert sharding.logical_to_spec((7, 16), ("embed", "mlp"), mesh) == P(None, "tensor")
    # A mesh axis may appear once per spec: the second use is dropped.
    assert sharding.logical_to_spec((8, 8), ("mlp", "heads"), mesh) == P("tensor", None)
    assert sharding.logical_to_spec((4,), (None,), mesh) == P(None)
    with pytest.raises(ValueError, match="do not match shape"):
        sharding.logical_to_spec((4, 4), ("embed",), mesh)


@pytest.mark.parametrize(
    "shape, spec",
    [
        ((10, 8), P(None, "fsdp")),
        ((16, 8), P("fsdp", None)),
        ((8, 8), P(None, "fsdp")),  # ties: the last dim
        ((3, 5), P()),
        ((), P()),
    ],
)
def test_fsdp_spec_largest_divisible_dim(shape, spec):
    mesh = sharding.create_mesh({"data": 2, "fsdp": 4})
    assert sharding.fsdp_spec(shape, mesh) == spec


class _Annotated(nn.Module):
    @nn.compact
    def __call__(self, x):
        init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
        x = nn.Dense(16, kernel_init=init)(x)
        return nn.Dense(6, name="out")(x)


def _paths(tree):
    return {
        "/".join(k.key for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def test_init_sharded_uses_logical_names_rules_and_fallback():
    mesh = sharding.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    module = _Annotated()
    init = lambda: module.init(jax.random.key(0), jnp.zeros((1, 4)))["params"]
    rules = ((r"out/bias", "replicate"), (r".*", "logical"))
    params, shardings = sharding.init_sharded(init, mesh, rules)
    got = {k: v.sharding.spec for k, v in _paths(params).items()}
    assert got["Dense_0/kernel"] == P("fsdp", "tensor")  # from the module's logical names
    assert got["out/kernel"] == P("fsdp", None)  # no names: fsdp on the largest divisible dim
    assert got["Dense_0/bias"] == P("fsdp")
    assert got["out/bias"] == P()
    # Same values as an unsharded init, and unboxed.
    reference = nn.unbox(init())
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(shardings) == jax.tree.structure(params)


def test_explicit_logical_names_rule():
    mesh = sharding.create_mesh({"data": 4, "tensor": 2})
    tree = {"w": jnp.zeros((4, 6)), "b": jnp.zeros((6,))}
    shardings = sharding.tree_shardings(tree, mesh, ((r"w", ("embed", "mlp")), (r".*", "fsdp")))
    assert shardings["w"].spec == P(None, "tensor")  # fsdp has size 1 -> embed dim not split
    assert shardings["b"].spec == P()


@pytest.mark.parametrize(
    "rules, match",
    [
        ((("(", "fsdp"),), "bad regex"),
        (((".*", "shard_everything"),), "unknown strategy 'shard_everything'"),
        (((".*",),), r"each rule is \(regex, strategy\)"),
    ],
)
def test_validate_rules_errors(rules, match):
    with pytest.raises(ValueError, match=match):
        sharding.validate_rules(rules, "config.sharding.trainable")


def test_put_global_and_abstract():
    mesh = sharding.create_mesh({"data": -1, "fsdp": 2})
    tree = {"w": np.arange(16, dtype=np.float32).reshape(4, 4)}
    shardings = sharding.tree_shardings(tree, mesh, ((".*", "fsdp"),))
    placed = sharding.put_global(tree, shardings)
    np.testing.assert_array_equal(placed["w"], tree["w"])
    assert placed["w"].sharding == shardings["w"]
    abstract = sharding.abstract_with_shardings(placed, shardings)
    assert abstract["w"].shape == (4, 4) and abstract["w"].sharding == shardings["w"]
