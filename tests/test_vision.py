"""Vision towers: HF ViT / CLIP-vision parity, demo towers, switches and error paths."""

from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwcl_jax.models import ViTConfig, build_tower, load_pretrained
from cwcl_jax.models.vision import CNNConfig, ImageProcessor

FIXTURES = Path(__file__).parent / "fixtures"


def numpy_params(module, *args, seed=0, scale=0.3):
    """Params shaped like `module.init`'s, drawn with numpy (no initializer compile)."""
    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *args))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def apply_fn(pretrained, method="__call__"):
    module, params = pretrained.module, pretrained.params
    return jax.jit(lambda inputs: module.apply({"params": params}, inputs, method=method))


@pytest.mark.parametrize(("name", "pooling"), [("tiny_vit", "pooler"), ("tiny_clip_vision", "cls")])
def test_tiny_checkpoint_matches_transformers(name, pooling):
    reference = np.load(FIXTURES / f"{name}_reference.npz")
    pretrained = load_pretrained(FIXTURES / name, pooling=pooling)
    inputs = {"pixels": reference["pixels"]}
    hidden = apply_fn(pretrained, "token_features")(inputs)
    np.testing.assert_allclose(hidden, reference["last_hidden_state"], atol=1e-5)
    pooled = apply_fn(pretrained)(inputs)
    np.testing.assert_allclose(pooled, reference["pooler_output"], atol=1e-5)


def test_vit_class_and_mean_pooling_follow_hidden_states():
    reference = np.load(FIXTURES / "tiny_vit_reference.npz")
    inputs = {"pixels": reference["pixels"]}
    hidden = reference["last_hidden_state"]
    cls = apply_fn(load_pretrained(FIXTURES / "tiny_vit"))(inputs)
    np.testing.assert_allclose(cls, hidden[:, 0], atol=1e-5)
    mean = apply_fn(load_pretrained(FIXTURES / "tiny_vit", pooling="mean"))(inputs)
    np.testing.assert_allclose(mean, hidden[:, 1:].mean(axis=1), atol=1e-5)


@pytest.mark.parametrize(("name", "mean"), [("tiny_vit", 0.5), ("tiny_clip_vision", 0.48145466)])
def test_image_processor_comes_from_preprocessor_config(name, mean):
    processor = load_pretrained(FIXTURES / name).processor
    assert isinstance(processor, ImageProcessor)
    assert processor.image_size == 32 and processor.mean[0] == pytest.approx(mean)
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    expected = (images / 255.0 - np.array(processor.mean)) / np.array(processor.std)
    np.testing.assert_allclose(processor.normalize(images), expected, rtol=1e-5, atol=1e-5)


# Reduced sizes keep XLA compile times small on CPU; the full demo sizes are shape-checked.
SMALLER = {
    "tiny_vit": {"image_size": 16, "hidden_size": 32, "num_layers": 1, "mlp_dim": 64},
    "small_cnn": {"image_size": 16, "channels": (8, 16)},
}


@pytest.mark.parametrize(("arch", "width"), [("tiny_vit", 128), ("small_cnn", 256)])
def test_demo_towers_output_width(arch, width):
    module = build_tower("image", arch)
    inputs = {"pixels": jnp.zeros((2, 64, 64, 3))}
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), inputs))
    features = jax.eval_shape(lambda v: module.apply(v, inputs), variables)
    chex.assert_shape(features, (2, width))


@pytest.mark.parametrize("arch", ["tiny_vit", "small_cnn"])
def test_demo_towers_every_param_gets_a_gradient(arch):
    module = build_tower("image", arch, **SMALLER[arch])
    pixels = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    params = numpy_params(module, {"pixels": pixels})
    loss = lambda p: jnp.sum(jnp.sin(module.apply({"params": p}, {"pixels": pixels}, train=True)))
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    chex.assert_tree_all_finite(grads)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    assert np.isfinite(value)


@pytest.mark.parametrize("arch", ["tiny_vit", "small_cnn"])
def test_every_image_param_has_logical_axes(arch):
    module = build_tower("image", arch)
    inputs = {"pixels": jnp.zeros((1, 64, 64, 3))}
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), inputs))
    leaves = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    assert all(len(x.names) == x.value.ndim for x in leaves)


@pytest.mark.parametrize("arch", ["tiny_vit", "small_cnn"])
def test_bfloat16_and_remat_switches(arch):
    pixels = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    overrides = SMALLER[arch]
    base = build_tower("image", arch, **overrides)
    params = numpy_params(base, {"pixels": pixels})
    grad = lambda module: jax.jit(
        jax.grad(lambda p: jnp.sum(module.apply({"params": p}, {"pixels": pixels}) ** 2))
    )(params)
    remat = build_tower("image", arch, **overrides, remat=True)
    chex.assert_trees_all_close(grad(base), grad(remat), rtol=1e-4, atol=1e-5)
    bf16 = build_tower("image", arch, **overrides, dtype=jnp.bfloat16)
    bf16_shapes = jax.eval_shape(bf16.init, jax.random.key(0), {"pixels": pixels})
    assert {x.dtype for x in jax.tree.leaves(nn.unbox(bf16_shapes))} == {np.dtype(np.float32)}
    out = jax.jit(lambda p: bf16.apply({"params": p}, {"pixels": pixels}))(params)
    chex.assert_type(out, jnp.float32)
    expected = jax.jit(lambda p: base.apply({"params": p}, {"pixels": pixels}))(params)
    np.testing.assert_allclose(out, expected, atol=0.1, rtol=0.05)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"image": np.zeros((1, 64, 64, 3))}, r"image inputs lack 'pixels'; got keys \['image'\]"),
        ({"pixels": np.zeros((1, 3, 64, 64))}, r"shape \(1, 3, 64, 64\), expected \[batch, 64"),
        ({"pixels": np.zeros((1, 32, 32, 3))}, r"shape \(1, 32, 32, 3\), expected"),
        ({"pixels": np.zeros((1, 64, 64, 3), np.uint8)}, "pixels must be normalized floats"),
    ],
)
@pytest.mark.parametrize("arch", ["tiny_vit", "small_cnn"])
def test_bad_pixels_are_named(arch, inputs, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(build_tower("image", arch).init, jax.random.key(0), inputs)


def test_vision_configs_reject_bad_values():
    with pytest.raises(ValueError, match="image_size=30 is not divisible by patch_size=8"):
        ViTConfig(30, 8, 16, 1, 2, 32)
    with pytest.raises(ValueError, match="pooling='pooler' with layout 'clip'"):
        ViTConfig(32, 8, 16, 1, 2, 32, layout="clip", pooling="pooler")
    with pytest.raises(ValueError, match="layout='swin'"):
        ViTConfig(32, 8, 16, 1, 2, 32, layout="swin")
    with pytest.raises(ValueError, match=r"channels \[20\] not divisible by num_groups"):
        CNNConfig(channels=(16, 20))
    with pytest.raises(ValueError, match=r"unknown tower image/resnet50; known: .*image/tiny_vit"):
        build_tower("image", "resnet50")
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['depth'\]"):
        build_tower("image", "tiny_vit", depth=3)
