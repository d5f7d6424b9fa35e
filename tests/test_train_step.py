"""The train step against a plain numpy reference; optimizer, state, non-finite stop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from step_fixtures import OPTIMIZER, init_params, init_state, make_batch, make_parts

from cwcl_jax import loop, train, train_step

KEY = jax.random.key(3)


def _np_tower(p, x):
    hidden = np.tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    return hidden @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def _np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_log_softmax(s):
    s = s - s.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def _np_cwcl_objective(params, frozen, batch, log_inverse_shift=0.0):
    """CWCL (paper kernel) trainable->frozen + InfoNCE frozen->trainable, float64 numpy."""
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    f64 = jax.tree.map(lambda a: np.asarray(a, np.float64), frozen)
    raw = _np_tower(f64, np.asarray(batch["text"]["x"], np.float64))
    trainable = _np_tower(p64["trainable_tower"], np.asarray(batch["image"]["x"], np.float64))
    p = _np_normalize(trainable @ p64["trainable_head"]["kernel"])
    q = r = _np_normalize(raw)
    tau = np.exp(-(p64["log_inverse_temperature"] + log_inverse_shift))
    weights = (r @ r.T) / 2 + 0.5
    s = p @ q.T / tau
    t2f = -(weights / weights.sum(1, keepdims=True) * _np_log_softmax(s)).sum(1).mean()
    f2t = -np.diag(_np_log_softmax(s.T)).mean()
    return t2f + f2t


def test_loss_and_gradient_match_numpy_reference():
    parts = make_parts()
    batch = make_batch(12)
    params, frozen = init_params(parts, batch)
    grads, loss, metrics = jax.jit(
        lambda p: train_step.full_batch_grads(parts, p, frozen, batch, KEY)
    )(params)
    expected = _np_cwcl_objective(params, frozen, batch)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # d loss / d log(1/tau) by central differences of the numpy objective.
    eps = 1e-4  # the shift is applied in float64
    objective = lambda shift: _np_cwcl_objective(params, frozen, batch, shift)
    numeric = (objective(eps) - objective(-eps)) / (2 * eps)
    np.testing.assert_allclose(grads["log_inverse_temperature"], numeric, rtol=1e-4)
    assert set(metrics) >= {"accuracy_t2f", "accuracy_f2t", "target_entropy", "temperature"}


def test_frozen_params_get_no_gradient_and_stay_unchanged():
    parts = make_parts()
    batch = make_batch(8)
    state, frozen = init_state(parts, batch)
    frozen_before = jax.tree.map(np.array, frozen)

    def loss_wrt_frozen(f):
        return train_step.full_batch_grads(parts, state.params, f, batch, KEY)[1]

    frozen_grads = jax.jit(jax.grad(loss_wrt_frozen))(frozen)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(frozen_grads))
    new_state, _ = jax.jit(lambda s: train_step.train_step(parts, s, frozen, batch))(state)
    for before, after in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(frozen), strict=True):
        np.testing.assert_array_equal(before, after)
    # The optimizer state only mirrors the trainable tree.
    assert set(new_state.params) == {"trainable_tower", "trainable_head", "log_inverse_temperature"}


def test_step_increments_and_follows_the_schedule():
    parts = make_parts()
    batch = make_batch(8)
    state, frozen = init_state(parts, batch)
    step = jax.jit(lambda s: train_step.train_step(parts, s, frozen, batch))
    first, m0 = step(state)
    second, m1 = step(first)
    assert int(first.step) == 1 and int(second.step) == 2
    # Warmup starts at lr 0: the first update leaves the params unchanged, the second does not.
    assert float(m0["learning_rate"]) == 0.0 and float(m1["learning_rate"]) == pytest.approx(1e-2)
    kernel = lambda s: np.asarray(s.params["trainable_tower"]["Dense_0"]["kernel"])
    np.testing.assert_array_equal(kernel(first), kernel(state))
    assert not np.array_equal(kernel(second), kernel(first))
    assert float(m0["grad_norm"]) > 0


def test_non_finite_loss_stops_naming_the_step():
    parts = make_parts()
    batch = make_batch(8)
    state, frozen = init_state(parts, batch)
    batch["image"]["x"] = batch["image"]["x"].at[0, 0].set(jnp.nan)
    _, metrics = jax.jit(lambda s: train_step.train_step(parts, s, frozen, batch))(state)
    scalars = {k: float(v) for k, v in metrics.items()}
    with pytest.raises(loop.NonFiniteError, match=r"step 17: non-finite \{'loss': nan"):
        loop.check_finite(17, scalars)
    loop.check_finite(1, {"loss": 1.0, "grad_norm": 2.0})


def test_weight_decay_mask_spares_biases_norms_and_temperature():
    params = {
        "tower": {
            "Dense_0": {"kernel": 1, "bias": 2},
            "norm": {"scale": 3},
            "emb": {"embedding": 4},
        },
        "log_inverse_temperature": 5,
        "bias": 6,
    }
    mask = train.weight_decay_mask(params, OPTIMIZER["weight_decay_pattern"])
    assert mask == {
        "tower": {"Dense_0": {"kernel": True, "bias": False}, "norm": {"scale": False},
                  "emb": {"embedding": True}},
        "log_inverse_temperature": False,
        "bias": False,
    }  # fmt: skip


def test_adamw_decays_only_masked_params():
    tx = train.make_optimizer({**OPTIMIZER, "warmup_steps": 0, "weight_decay": 0.5}, 10)
    params = {"a": {"kernel": jnp.ones((2, 2))}, "bias": jnp.ones((2,))}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    # With zero gradients only weight decay moves a param: -lr * wd * param.
    np.testing.assert_allclose(updates["a"]["kernel"], -1e-2 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(updates["bias"], 0.0)


def test_learning_rate_schedule_shape_and_errors():
    schedule = train.learning_rate_schedule({**OPTIMIZER, "warmup_steps": 4}, 20)
    assert float(schedule(0)) == 0.0
    assert float(schedule(2)) == pytest.approx(5e-3)
    assert float(schedule(4)) == pytest.approx(1e-2)
    assert float(schedule(20)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match=r"warmup_steps=20 must be in \[0, total_steps=20\)"):
        train.learning_rate_schedule({**OPTIMIZER, "warmup_steps": 20}, 20)
    with pytest.raises(ValueError, match=r"config.optimizer is missing \['grad_clip_norm'\]"):
        train.make_optimizer({k: v for k, v in OPTIMIZER.items() if k != "grad_clip_norm"}, 5)


def test_gradients_are_clipped_before_adam():
    """Clipped to the same norm, a 100x larger first gradient gives Adam the same history
    as the second one, so both updates match; unclipped, they would not."""
    opt = {**OPTIMIZER, "warmup_steps": 0, "weight_decay": 0.0, "grad_clip_norm": 0.5}
    tx = train.make_optimizer(opt, 10**6)
    params = {"w": jnp.zeros((2,))}
    opt_state = tx.init(params)
    first, opt_state = tx.update({"w": jnp.asarray([300.0, 400.0])}, opt_state, params)
    second, _ = tx.update({"w": jnp.asarray([3.0, 4.0])}, opt_state, params)
    np.testing.assert_allclose(second["w"], first["w"], rtol=1e-5)


def test_step_key_depends_on_step_and_survives_resume():
    parts = make_parts()
    state, _ = init_state(parts, make_batch(4))
    later = state.replace(step=state.step + 5)
    assert not np.array_equal(
        jax.random.key_data(train.step_key(state)), jax.random.key_data(train.step_key(later))
    )
    rebuilt = train.TrainState(step=later.step, params=None, opt_state=None, rng=later.rng)
    np.testing.assert_array_equal(
        jax.random.key_data(train.step_key(rebuilt)), jax.random.key_data(train.step_key(later))
    )
