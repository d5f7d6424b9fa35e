"""Exact (GradCache) accumulation: the accumulated gradient equals the full-batch gradient."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from step_fixtures import init_params, init_state, make_batch, make_parts, with_accum

from cwcl_jax import losses, sharding, train_step

KEY = jax.random.key(7)
TOL = {"rtol": 2e-5, "atol": 2e-6}


@settings(max_examples=25, deadline=None)
@given(
    accum=st.sampled_from([1, 2, 3, 4]),
    rows=st.integers(1, 5),
    trailing=st.lists(st.integers(1, 3), max_size=2),
)
def test_split_merge_round_trip_and_strided_rows(accum, rows, trailing):
    x = np.arange(accum * rows * int(np.prod(trailing))).reshape(accum * rows, *trailing)
    split = train_step.split_micro_batches({"a": x}, accum)["a"]
    chex.assert_shape(split, (accum, rows, *trailing))
    for a in range(accum):
        np.testing.assert_array_equal(split[a], x[a::accum])
    np.testing.assert_array_equal(train_step.merge_micro_batches(split), x)


def _assert_trees_close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL)


@pytest.mark.parametrize(
    "loss, frozen_head, accum",
    [
        (losses.LossConfig(), False, 2),
        (losses.LossConfig(weight_kind="shuffled", shuffle_seed=3), True, 4),
        (
            losses.LossConfig(cwcl_directions=("trainable_to_frozen", "frozen_to_trainable")),
            True,
            8,
        ),
        (losses.LossConfig(name="siglip"), True, 4),
    ],
    ids=["cwcl-paper", "cwcl-shuffled-head", "cwcl-both-head", "siglip-head"],
)
def test_accumulated_grads_equal_full_batch(loss, frozen_head, accum):
    parts = make_parts(loss, frozen_head=frozen_head)
    batch = make_batch(16)
    params, frozen = init_params(parts, batch)
    full = jax.jit(lambda p: train_step.full_batch_grads(parts, p, frozen, batch, KEY))(params)
    acc_parts = with_accum(parts, accum)
    acc = jax.jit(lambda p: train_step.accumulated_grads(acc_parts, p, frozen, batch, KEY))(params)
    (g_full, loss_full, m_full), (g_acc, loss_acc, m_acc) = full, acc
    np.testing.assert_allclose(loss_acc, loss_full, **TOL)
    _assert_trees_close(m_acc, m_full)
    _assert_trees_close(g_acc, g_full)
    # Every trainable leaf gets a gradient (the heads, temperature and bias included).
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_acc))


def test_dropout_masks_are_the_same_in_both_passes():
    """With dropout, the recomputed forward (pass 3) must reuse pass 1's masks: compare
    with plain autodiff straight through the per-micro-batch embedding."""
    parts = with_accum(make_parts(dropout=0.5), 4)
    batch = make_batch(16)
    params, frozen = init_params(parts, batch)
    micro = train_step.split_micro_batches(batch, 4)
    keys = jax.random.split(KEY, 4)

    def direct_loss(p):  # differentiate through every micro-batch forward at once
        emb = jax.vmap(lambda inputs, k: train_step._embed_trainable(parts, p, inputs, k))(
            micro["image"], keys
        )
        raw = jax.vmap(lambda x: parts.frozen_module.apply({"params": frozen}, x))(micro["text"])
        outputs = parts.model.apply(
            {"params": p},
            train_step.merge_micro_batches(emb),
            train_step.merge_micro_batches(raw),
            method="outputs",
        )
        return train_step._loss_from_outputs(parts, outputs)[0]

    expected = jax.jit(jax.grad(direct_loss))(params)
    grads, _, _ = jax.jit(lambda p: train_step.accumulated_grads(parts, p, frozen, batch, KEY))(
        params
    )
    _assert_trees_close(grads, expected)
    # Dropout did act: the gradient differs from the same step without it.
    no_dropout = with_accum(make_parts(), 4)
    accumulate = lambda p: train_step.accumulated_grads(no_dropout, p, frozen, batch, KEY)
    plain = jax.jit(accumulate)(params)[0]
    kernel = lambda g: np.asarray(g["trainable_tower"]["Dense_0"]["kernel"])
    assert not np.allclose(kernel(grads), kernel(plain))


def test_sharded_accumulated_step_equals_unsharded_full_batch_step():
    mesh = sharding.create_mesh({"data": 4, "fsdp": 2})
    batch = make_batch(32)
    reference_parts = make_parts(frozen_head=True)
    state, frozen = init_state(reference_parts, batch)
    expected_state, expected_metrics = jax.jit(
        lambda s: train_step.train_step(reference_parts, s, frozen, batch)
    )(state)

    parts = make_parts(frozen_head=True, accum_steps=2, mesh=mesh)
    rules = ((r"^(step|rng)$", "replicate"), (r".*", "fsdp"))
    state_shardings = sharding.tree_shardings(state, mesh, rules)
    frozen_shardings = sharding.tree_shardings(frozen, mesh, ((r".*", "replicate"),))
    batch_shardings = jax.tree.map(lambda _: sharding.batch_sharding(mesh), batch)
    step = train_step.jit_train_step(parts, state_shardings, frozen_shardings, batch_shardings)
    placed = jax.device_put(state, state_shardings)
    new_state, step_metrics = step(
        placed, jax.device_put(frozen, frozen_shardings), jax.device_put(batch, batch_shardings)
    )
    np.testing.assert_allclose(step_metrics["loss"], expected_metrics["loss"], **TOL)
    np.testing.assert_allclose(step_metrics["grad_norm"], expected_metrics["grad_norm"], **TOL)
    _assert_trees_close(new_state.params, expected_state.params)
    assert int(new_state.step) == 1
    kernel = new_state.params["trainable_tower"]["Dense_0"]["kernel"]
    assert kernel.sharding == state_shardings.params["trainable_tower"]["Dense_0"]["kernel"]


@pytest.mark.parametrize(
    "batch_size, accum, axes, match",
    [
        (30, 4, {"data": 1}, r"batch_size=30 must be a multiple of config.accum_steps=4 x 1 "),
        (32, 3, {"data": 8}, r"accum_steps=3 x 8 batch shards .* = 24"),
        (32, 0, {"data": 8}, r"accum_steps must be >= 1"),
    ],
)
def test_check_batch_layout_errors(batch_size, accum, axes, match):
    devices = jax.devices()[: axes["data"]]
    mesh = sharding.create_mesh(axes, devices=devices)
    with pytest.raises(ValueError, match=match):
        train_step.check_batch_layout(batch_size, accum, mesh)


def test_check_batch_layout_accepts_divisible():
    mesh = sharding.create_mesh({"data": 4, "fsdp": 2})
    train_step.check_batch_layout(64, 4, mesh)


def test_parts_are_hashable_static():
    # StepParts is closed over by jit; it must stay a frozen dataclass.
    assert dataclasses.is_dataclass(make_parts())
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_parts().accum_steps = 2
