"""make_sharded_two_tower_loss on 8 simulated CPU devices equals the unsharded loss."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from cwcl_jax.losses import DIRECTIONS, LossConfig, make_sharded_two_tower_loss, two_tower_loss

N, D, D_RAW = 16, 6, 5


def make_mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))


def batch(seed=0, n=N):
    """Unit-norm trainable and frozen [n, D], raw frozen [n, D_RAW]; half the pairs match."""
    kp, kq, kr = jax.random.split(jax.random.key(seed), 3)
    unit = lambda k, w: (x := jax.random.normal(k, (n, w))) / jnp.linalg.norm(x, axis=1)[:, None]
    p, q = unit(kp, D), unit(kq, D)
    return p, q.at[: n // 2].set(p[: n // 2]), jax.random.normal(kr, (n, D_RAW))


def value_and_grads(loss_fn):
    """jit(value_and_grad) of loss_fn wrt trainable, frozen, temperature and bias."""

    def scalar(p, q, r, t, b):
        return loss_fn(p, q, r, temperature=t, bias=b)

    return jax.jit(jax.value_and_grad(scalar, argnums=(0, 1, 3, 4), has_aux=True))


@functools.cache
def unsharded(config):
    return value_and_grads(functools.partial(two_tower_loss, config=config))


CASES = [  # (mesh shape, mesh axes, batch axes, config)
    ((8,), ("data",), ("data",), LossConfig()),
    ((8, 1), ("data", "fsdp"), ("data", "fsdp"), LossConfig(name="cl", block_size=2)),
    ((4, 2), ("data", "fsdp"), ("data", "fsdp"), LossConfig(weight_kind="exp")),
    # 2 rows per device with blocks of 3: one padded block per device.
    ((4, 2), ("data", "fsdp"), ("data", "fsdp"),
     LossConfig(weight_kind="shuffled", cwcl_directions=DIRECTIONS, block_size=3)),
    ((2, 4), ("data", "fsdp"), ("fsdp", "data"), LossConfig(name="siglip", block_size=1)),
]  # fmt: skip


@pytest.mark.parametrize(("shape", "names", "batch_axes", "config"), CASES)
def test_sharded_equals_unsharded(shape, names, batch_axes, config):
    mesh = make_mesh(shape, names)
    p, q, r = batch(seed=sum(shape))
    expected = unsharded(config)(p, q, r, 0.05, -3.0)
    sharded = value_and_grads(make_sharded_two_tower_loss(mesh, config, batch_axes))
    rows = NamedSharding(mesh, P(batch_axes))
    with jax.set_mesh(mesh):
        got = sharded(*(jax.device_put(x, rows) for x in (p, q, r)), 0.05, -3.0)
    chex.assert_trees_all_close(got, expected, rtol=2e-5, atol=1e-6)
    (_, metrics), grads = got
    assert metrics["accuracy_t2f"] >= 0.5  # the matching half is found
    assert grads[0].sharding.is_equivalent_to(rows, 2)  # gradients stay batch-sharded


def test_sharded_accepts_unsharded_inputs_under_jit():
    mesh = make_mesh((8,), ("data",))
    loss_fn = make_sharded_two_tower_loss(mesh, LossConfig(block_size=4), ("data",))
    p, q, r = batch(seed=3)
    with jax.set_mesh(mesh):
        loss, _ = jax.jit(lambda *x: loss_fn(*x, temperature=0.1))(p, q, r)
    expected, _ = two_tower_loss(p, q, r, temperature=0.1, config=LossConfig())
    np.testing.assert_allclose(loss, expected, rtol=2e-5)


def test_batch_that_does_not_divide_is_rejected_before_compiling():
    mesh = make_mesh((4, 2), ("data", "fsdp"))
    loss_fn = make_sharded_two_tower_loss(mesh, LossConfig())
    with pytest.raises(ValueError, match=r"batch size 12 does not divide across the 8 devices"):
        loss_fn(*batch(n=12), temperature=0.1)


def test_unknown_batch_axis_is_rejected():
    mesh = make_mesh((8,), ("data",))
    with pytest.raises(ValueError, match=r"batch_axes \('data', 'fsdp'\).*missing: \['fsdp'\]"):
        make_sharded_two_tower_loss(mesh, LossConfig())


def test_sharded_validates_like_unsharded():
    mesh = make_mesh((8,), ("data",))
    loss_fn = make_sharded_two_tower_loss(mesh, LossConfig(name="siglip"), ("data",))
    with pytest.raises(ValueError, match="loss 'siglip' needs bias"):
        loss_fn(*batch(), temperature=0.1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        loss_fn(*batch(), temperature=-0.1, bias=0.0)
