"""BERT-family text tower (BERT, RoBERTa, MiniLM), its checkpoint converters and
`encode_texts`, which gives the sentence embeddings a sentence-transformers user expects."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cwcl_jax.models import layers, loading

POOLINGS = ("mean", "cls", "max", "pooler")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """A BERT-layout (post-LN) text encoder and how its tokens are pooled.

    roberta_positions: position ids count from pad_token_id + 1 and skip padding tokens
      (RoBERTa), instead of 0..L-1 (BERT).
    pooling: "mean" over the attention mask (sentence-transformers), "cls" (first token),
      "max" over real tokens, or "pooler" (BERT's dense + tanh on the first token).
    normalize: L2-normalize the pooled features.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    max_positions: int = 512
    type_vocab_size: int = 2
    pad_token_id: int = 0
    roberta_positions: bool = False
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    pooling: str = "mean"
    normalize: bool = False
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"TextConfig.pooling={self.pooling!r}; supported: {POOLINGS}")

    def encoder(self) -> layers.EncoderConfig:
        return layers.encoder_config(self, norm_first=False)


def check_text_inputs(inputs: dict) -> None:
    """Raises ValueError unless inputs has int input_ids/attention_mask of equal [B, L]."""
    missing = [k for k in ("input_ids", "attention_mask") if k not in inputs]
    if missing:
        raise ValueError(f"text inputs lack {missing}; got keys {sorted(inputs)}")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise ValueError(
            f"text inputs: input_ids {ids.shape} and attention_mask {mask.shape} must both "
            "be [batch, length]"
        )
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"text inputs: input_ids must be integers, got {ids.dtype}")


def position_ids(input_ids: jax.Array, config: TextConfig) -> jax.Array:
    """[B, L] position ids: 0..L-1, or RoBERTa's pad-skipping count from pad_token_id + 1."""
    if not config.roberta_positions:
        return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    is_token = (input_ids != config.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(is_token, axis=1) * is_token + config.pad_token_id


def pool_tokens(tokens: jax.Array, mask: jax.Array, pooling: str) -> jax.Array:
    """tokens [B, L, H], mask [B, L] -> [B, H] (mean / max over real tokens, or first)."""
    if pooling == "cls":
        return tokens[:, 0]
    mask = mask[..., None].astype(tokens.dtype)
    if pooling == "max":
        # sentence-transformers' convention: padding set to -1e9 before the max.
        return jnp.max(jnp.where(mask > 0, tokens, -1e9), axis=1)
    return jnp.sum(tokens * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


def _embed(num: int, features: int, axes: tuple, config: TextConfig) -> nn.Embed:
    return nn.Embed(
        num,
        features,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        embedding_init=layers.partitioned(layers.default_kernel_init, *axes),
    )


class TextEncoder(nn.Module):
    """BERT-layout text tower: {"input_ids", "attention_mask"} [B, L] -> pooled [B, hidden]."""

    config: TextConfig

    def setup(self):
        cfg, enc = self.config, self.config.encoder()
        width = cfg.hidden_size
        self.word_embeddings = _embed(cfg.vocab_size, width, ("vocab", "embed"), cfg)
        self.position_embeddings = _embed(cfg.max_positions, width, ("positions", "embed"), cfg)
        self.token_type_embeddings = _embed(cfg.type_vocab_size, width, (None, "embed"), cfg)
        self.embeddings_norm = layers.layer_norm(enc, "embeddings_norm")
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.encoder = layers.Encoder(enc)
        if cfg.pooling == "pooler":
            self.pooler = nn.Dense(
                cfg.hidden_size,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                kernel_init=layers.partitioned(layers.default_kernel_init, "embed", "mlp"),
                bias_init=layers.partitioned(nn.initializers.zeros, "mlp"),
            )

    def token_features(self, inputs: dict, *, train: bool = False) -> jax.Array:
        """Final hidden states [B, L, hidden] (Hugging Face's last_hidden_state)."""
        check_text_inputs(inputs)
        cfg = self.config
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        first_position = cfg.pad_token_id + 1 if cfg.roberta_positions else 0
        if first_position + ids.shape[1] > cfg.max_positions:
            raise ValueError(
                f"text inputs: length {ids.shape[1]} exceeds max_positions={cfg.max_positions}"
            )
        token_types = inputs.get("token_type_ids", jnp.zeros_like(ids))
        x = (
            self.word_embeddings(ids)
            + self.position_embeddings(position_ids(ids, cfg))
            + self.token_type_embeddings(token_types)
        )
        x = self.dropout(self.embeddings_norm(x), deterministic=not train)
        return self.encoder(x, mask, train)

    def __call__(self, inputs: dict, *, train: bool = False) -> jax.Array:
        """Pooled (and, with config.normalize, L2-normalized) float32 features [B, hidden]."""
        tokens = self.token_features(inputs, train=train)
        if self.config.pooling == "pooler":
            pooled = jnp.tanh(self.pooler(tokens[:, 0])).astype(jnp.float32)
        else:
            mask = inputs["attention_mask"]
            pooled = pool_tokens(tokens.astype(jnp.float32), mask, self.config.pooling)
        return layers.l2_normalize(pooled) if self.config.normalize else pooled


# From scratch; the vocabulary size fits bert-base-uncased / MiniLM tokenizers.
TINY_BERT = TextConfig(vocab_size=30522, hidden_size=128, num_layers=2, num_heads=2, mlp_dim=512)


# --- Hugging Face checkpoints -------------------------------------------------------------

BERT_LAYER = {
    "attention/query": "attention.self.query",
    "attention/key": "attention.self.key",
    "attention/value": "attention.self.value",
    "attention/out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "mlp/fc1": "intermediate.dense",
    "mlp/fc2": "output.dense",
    "mlp_norm": "output.LayerNorm",
}

BERT_RULES = (
    *loading.module_rules("word_embeddings", "embeddings.word_embeddings"),
    *loading.module_rules("position_embeddings", "embeddings.position_embeddings"),
    *loading.module_rules("token_type_embeddings", "embeddings.token_type_embeddings"),
    *loading.module_rules("embeddings_norm", "embeddings.LayerNorm"),
    *loading.encoder_rules("encoder", "encoder.layer.{i}", BERT_LAYER),
    *loading.module_rules("pooler", "pooler.dense"),
)

# Buffers, the pooler when another pooling is chosen, and task heads of *For* classes.
BERT_IGNORE = (
    r".*position_ids",
    r".*token_type_ids",
    r"(.*\.)?pooler\.dense\.(weight|bias)",
    r"(cls|lm_head|classifier|qa_outputs)\..*",
)

_ST_POOLING_MODES = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max"}


def _st_pooling(config_path: Path) -> str:
    """The one pooling mode switched on in a sentence-transformers Pooling config.json."""
    config = loading.read_json(config_path)
    modes = [
        k[len("pooling_mode_") :] for k, v in config.items() if k.startswith("pooling_mode_") and v
    ]
    if len(modes) != 1 or modes[0] not in _ST_POOLING_MODES:
        raise ValueError(
            f"{config_path}: pooling modes {modes} are not supported; exactly one of "
            f"{sorted('pooling_mode_' + m for m in _ST_POOLING_MODES)} must be true"
        )
    return _ST_POOLING_MODES[modes[0]]


def sentence_transformers_settings(checkpoint_dir: Path) -> dict[str, Any]:
    """pooling / normalize as the checkpoint's modules.json says ({} without one)."""
    modules_path = checkpoint_dir / "modules.json"
    if not modules_path.is_file():
        return {}
    settings: dict[str, Any] = {"normalize": False}
    for module in loading.read_json(modules_path):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = module.get("path", "")
        if kind == "Transformer" and path in ("", "."):
            continue
        if kind == "Pooling":
            settings["pooling"] = _st_pooling(checkpoint_dir / path / "config.json")
        elif kind == "Normalize":
            settings["normalize"] = True
        else:
            raise ValueError(
                f"{modules_path}: module {module.get('type')!r} at path {path!r} is not "
                "supported (supported: Transformer at the root, Pooling, Normalize)"
            )
    return settings


def text_config_from_hf(config: dict, source: str, *, roberta: bool) -> TextConfig:
    """TextConfig from a BERT/RoBERTa config.json dict (`source` names it in errors)."""
    get = lambda key, *default: loading.config_value(config, key, source, *default)
    if get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"{source}: position_embedding_type={config['position_embedding_type']!r} is not "
            "supported (only 'absolute')"
        )
    return TextConfig(
        vocab_size=get("vocab_size"),
        hidden_size=get("hidden_size"),
        num_layers=get("num_hidden_layers"),
        num_heads=get("num_attention_heads"),
        mlp_dim=get("intermediate_size"),
        max_positions=get("max_position_embeddings"),
        type_vocab_size=get("type_vocab_size", 2),
        pad_token_id=get("pad_token_id", 1 if roberta else 0),
        roberta_positions=roberta,
        activation=get("hidden_act", "gelu"),
        layer_norm_eps=get("layer_norm_eps", 1e-12),
        dropout_rate=get("hidden_dropout_prob", 0.0),
        attention_dropout_rate=get("attention_probs_dropout_prob", 0.0),
    )


def _build_text_encoder(roberta: bool) -> Callable[..., TextEncoder]:
    def build(checkpoint_dir: Path, config: dict, **overrides: Any) -> TextEncoder:
        source = str(checkpoint_dir / "config.json")
        text_config = text_config_from_hf(config, source, roberta=roberta)
        settings = {**sentence_transformers_settings(checkpoint_dir), **overrides}
        return TextEncoder(loading.replace_fields(text_config, settings, "load_pretrained"))

    return build


TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def load_tokenizer(checkpoint_dir: Path, config: dict) -> Any:
    """AutoTokenizer of the directory, truncating at sentence-transformers' max_seq_length.

    Checks that tokenizer files exist (transformers would otherwise build an empty
    vocabulary) and that token ids fit the embedding table (JAX clamps out-of-range ids).
    """
    from transformers import AutoTokenizer

    if not any((checkpoint_dir / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{checkpoint_dir} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)})"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint_dir))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{checkpoint_dir}: cannot load its tokenizer files: {e}") from e
    if len(tokenizer) > config["vocab_size"]:
        raise ValueError(
            f"{checkpoint_dir}: the tokenizer has {len(tokenizer)} tokens, more than "
            f"config.json vocab_size={config['vocab_size']}"
        )
    st_config = checkpoint_dir / "sentence_bert_config.json"
    if st_config.is_file():
        max_length = loading.read_json(st_config).get("max_seq_length")
        tokenizer.model_max_length = max_length or tokenizer.model_max_length
    return tokenizer


def example_text_inputs(module: TextEncoder) -> dict:
    del module
    return {"input_ids": jnp.ones((1, 8), jnp.int32), "attention_mask": jnp.ones((1, 8), jnp.int32)}


for _model_type, _prefix, _roberta in (("bert", "bert.", False), ("roberta", "roberta.", True)):
    loading.register_converter(
        _model_type,
        loading.Converter(
            modality="text",
            build_module=_build_text_encoder(_roberta),
            example_inputs=example_text_inputs,
            rules=BERT_RULES,
            load_processor=load_tokenizer,
            ignore=BERT_IGNORE,
            prefixes=("", _prefix),
        ),
    )


# --- sentence embeddings ------------------------------------------------------------------


def _round_up_pow2(n: int, cap: int) -> int:
    return min(1 << max(n - 1, 0).bit_length(), cap)


def _padded_batch(token_lists: list[list[int]], rows: int, cols: int, pad_id: int) -> dict:
    """Token id lists -> {"input_ids", "attention_mask"} int32 [rows, cols], right-padded."""
    ids = np.full((rows, cols), pad_id, np.int32)
    mask = np.zeros((rows, cols), np.int32)
    for row, tokens in enumerate(token_lists):
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def make_text_encoder(
    pretrained: loading.Pretrained, *, batch_size: int = 256, max_length: int | None = None
) -> Callable[[Sequence[str]], np.ndarray]:
    """A function texts -> float32 [n, hidden] running the tower jit-compiled in batches.

    As sentence-transformers does, texts are sorted by length so each batch holds similar
    lengths; batches are padded to power-of-two lengths and row counts, so a few compiled
    shapes serve every call.
    """
    if pretrained.modality != "text":
        raise ValueError(f"{pretrained.source} is a {pretrained.modality} tower, not a text tower")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokenizer, module = pretrained.processor, pretrained.module
    max_length = min(max_length or tokenizer.model_max_length, module.config.max_positions)
    apply = jax.jit(lambda params, inputs: module.apply({"params": params}, inputs))

    def encode_batch(token_lists: list[list[int]]) -> np.ndarray:
        rows = _round_up_pow2(len(token_lists), batch_size)
        cols = _round_up_pow2(max(map(len, token_lists)), max_length)
        inputs = _padded_batch(token_lists, rows, cols, tokenizer.pad_token_id)
        return np.asarray(apply(pretrained.params, inputs))[: len(token_lists)]

    def encode(texts: Sequence[str]) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"texts must be strings; item {bad[0]} is {type(texts[bad[0]])}")
        embeddings = np.zeros((len(texts), module.config.hidden_size), np.float32)
        if not texts:
            return embeddings
        token_lists = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        order = np.argsort([len(tokens) for tokens in token_lists], kind="stable")
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            embeddings[rows] = encode_batch([token_lists[i] for i in rows])
        return embeddings

    return encode


def encode_texts(path: str | Path, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
    """Sentence embeddings float32 [n, dim] of the checkpoint at `path`, with the pooling
    and normalization its own sentence-transformers files (modules.json) specify."""
    return make_text_encoder(loading.load_pretrained(path), batch_size=batch_size)(texts)
