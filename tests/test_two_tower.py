"""TwoTower: outputs, frozen-side isolation, temperature/bias, heads, pretrained inits."""

import math
from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwcl_jax.models import TwoTower, build_tower, frozen_features, load_pretrained

FIXTURES = Path(__file__).parent / "fixtures"
SMALL_VIT = {"image_size": 16, "hidden_size": 32, "num_layers": 1, "mlp_dim": 64}
BATCH, FROZEN_DIM = 4, 24


def pixels(seed=0):
    rng = np.random.default_rng(seed)
    return {"pixels": rng.normal(size=(BATCH, 16, 16, 3)).astype(np.float32)}


def frozen_raw(seed=1):
    return np.random.default_rng(seed).normal(size=(BATCH, FROZEN_DIM)).astype(np.float32)


def make_model(**kwargs):
    tower = build_tower("image", "tiny_vit", **SMALL_VIT)
    return TwoTower(tower, frozen_dim=kwargs.pop("frozen_dim", FROZEN_DIM), **kwargs)


def numpy_params(module, *args, seed=0, scale=0.3):
    """Params shaped like `module.init`'s, drawn with numpy (no initializer compile); the
    temperature and bias keep their init values."""
    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *args))["params"]
    rng = np.random.default_rng(seed)
    draw = lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype)
    params = jax.tree.map(draw, shapes)
    params["log_inverse_temperature"] = np.float32(math.log(module.init_inverse_temperature))
    if module.use_bias:
        params["bias"] = np.float32(module.init_bias)
    return params


def test_outputs_are_normalized_with_the_contract_shapes():
    model = make_model()
    params = numpy_params(model, pixels(), frozen_raw())
    out = jax.jit(lambda p: model.apply({"params": p}, pixels(), frozen_raw()))(params)
    chex.assert_shape([out["trainable"], out["frozen"], out["frozen_raw"]], (BATCH, FROZEN_DIM))
    chex.assert_type([out["trainable"], out["frozen"]], jnp.float32)
    for name in ("trainable", "frozen", "frozen_raw"):
        np.testing.assert_allclose(np.linalg.norm(out[name], axis=-1), 1.0, rtol=1e-5)
    raw = frozen_raw()
    np.testing.assert_allclose(
        out["frozen"], raw / np.linalg.norm(raw, axis=-1, keepdims=True), rtol=1e-5
    )
    np.testing.assert_allclose(out["frozen_raw"], out["frozen"])
    assert out["temperature"].shape == () and float(out["temperature"]) == pytest.approx(0.1)
    assert out["bias"] is None


def test_init_values_of_temperature_and_bias():
    model = make_model(use_bias=True)
    # Only the scalars: setup creates them; the towers and heads stay uncalled.
    params = nn.unbox(model.init(jax.random.key(0), method="temperature"))["params"]
    assert set(params) == {"log_inverse_temperature", "bias"}
    assert float(params["log_inverse_temperature"]) == pytest.approx(math.log(10))
    assert float(params["bias"]) == -10.0


@pytest.mark.parametrize(("log_inverse", "expected"), [(math.log(1e4), 0.01), (-3.0, 1.0)])
def test_temperature_is_clipped_and_stops_moving(log_inverse, expected):
    model = make_model()
    params = numpy_params(model, pixels(), frozen_raw())
    params["log_inverse_temperature"] = np.float32(log_inverse)
    temperature = lambda p: model.apply({"params": p}, method="temperature")
    assert float(temperature(params)) == pytest.approx(expected)
    assert float(jax.grad(temperature)(params)["log_inverse_temperature"]) == 0.0


def contrastive_loss(out):
    """Plain InfoNCE trainable -> frozen, enough to drive gradients through both sides."""
    logits = out["trainable"] @ out["frozen"].T / out["temperature"]
    return -jnp.mean(jnp.diag(jax.nn.log_softmax(logits, axis=-1)))


def test_gradients_reach_trainable_params_but_not_the_frozen_side():
    model = make_model(frozen_head=True, embed_dim=16)
    params = numpy_params(model, pixels(), frozen_raw())

    def loss(p, raw):
        return contrastive_loss(model.apply({"params": p}, pixels(), raw))

    grads, raw_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, frozen_raw())
    assert not np.any(raw_grad)  # stop_gradient on the frozen features
    chex.assert_tree_all_finite(grads)
    assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))
    assert set(grads) == {
        "trainable_tower",
        "trainable_head",
        "frozen_projection",
        "log_inverse_temperature",
    }


def test_frozen_tower_params_get_zero_gradient():
    frozen = load_pretrained(FIXTURES / "tiny_bert")
    text = {
        "input_ids": np.array([[2, 7, 9, 3], [2, 11, 3, 0]] * 2, np.int32),
        "attention_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0]] * 2, np.int32),
    }
    model = make_model(frozen_dim=32)
    params = numpy_params(model, pixels(), np.zeros((BATCH, 32), np.float32))

    def loss(trainable, frozen_params):
        raw = frozen_features(frozen.module, frozen_params, text)
        return contrastive_loss(model.apply({"params": trainable}, pixels(), raw))

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, frozen.params)
    assert all(not np.any(g) for g in jax.tree.leaves(grads[1]))
    assert any(np.any(g) for g in jax.tree.leaves(grads[0]))


def test_halves_match_the_full_call():
    model = make_model(frozen_head=True, embed_dim=16, use_bias=True)
    params = numpy_params(model, pixels(), frozen_raw())
    variables = {"params": params}
    out = model.apply(variables, pixels(), frozen_raw())
    np.testing.assert_allclose(
        model.apply(variables, pixels(), method="embed_trainable"), out["trainable"], rtol=1e-6
    )
    np.testing.assert_allclose(
        model.apply(variables, frozen_raw(), method="embed_frozen"), out["frozen"], rtol=1e-6
    )
    chex.assert_shape(out["frozen_raw"], (BATCH, FROZEN_DIM))
    assert float(out["bias"]) == -10.0


def test_pretrained_tower_drops_in_as_the_trainable_init():
    pretrained = load_pretrained(FIXTURES / "tiny_vit", pooling="mean")
    model = TwoTower(pretrained.module, frozen_dim=FROZEN_DIM)
    images = {"pixels": np.zeros((BATCH, 32, 32, 3), np.float32)}
    params = numpy_params(model, images, frozen_raw())
    chex.assert_trees_all_equal_shapes_and_dtypes(params["trainable_tower"], pretrained.params)
    params["trainable_tower"] = pretrained.params
    features = pretrained.module.apply({"params": pretrained.params}, images)
    head = params["trainable_head"]["kernel"]
    expected = features @ head / np.linalg.norm(features @ head, axis=-1, keepdims=True)
    got = model.apply({"params": params}, images, method="embed_trainable")
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_every_param_has_logical_axes():
    model = make_model(frozen_head=True, embed_dim=16, use_bias=True)
    variables = jax.eval_shape(model.init, jax.random.key(0), pixels(), frozen_raw())
    leaves = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    assert all(len(x.names) == x.value.ndim for x in leaves)


def test_bfloat16_compute_returns_float32_unit_embeddings():
    tower = build_tower("image", "tiny_vit", **SMALL_VIT, dtype=jnp.bfloat16)
    model = TwoTower(tower, frozen_dim=FROZEN_DIM, dtype=jnp.bfloat16)
    params = numpy_params(model, pixels(), frozen_raw())
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(np.float32)}
    out = jax.jit(lambda p: model.apply({"params": p}, pixels(), frozen_raw()))(params)
    chex.assert_type(out["trainable"], jnp.float32)
    np.testing.assert_allclose(np.linalg.norm(out["trainable"], axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "raw", "message"),
    [
        ({"embed_dim": 16}, frozen_raw(), "embed_dim=16 differs from frozen_dim=24"),
        ({}, np.zeros((BATCH, 5), np.float32), r"frozen_raw has shape \(4, 5\), expected"),
        (
            {},
            np.zeros((BATCH + 1, FROZEN_DIM), np.float32),
            "trainable batch 4 != frozen_raw batch 5",
        ),
        ({"init_inverse_temperature": 1000.0}, frozen_raw(), "must lie in temperature_range"),
    ],
)
def test_bad_configuration_and_inputs_are_named(kwargs, raw, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(make_model(**kwargs).init, jax.random.key(0), pixels(), raw)
