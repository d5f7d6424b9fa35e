"""Transformer encoder building blocks shared by the text, vision and speech towers.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) so the trainer
can shard by rules. Names used here:
  "embed" (model width), "mlp" (feed-forward width), "heads", "kv" (per-head width),
  "vocab", "positions" (embedding tables), "conv_in"/"conv_out" (conv channels).
Computation runs in `dtype` (e.g. bfloat16) with parameters stored in `param_dtype`;
softmax and layer-norm statistics stay in float32.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Hugging Face `hidden_act` names -> functions. "gelu" is the exact (erf) GELU in PyTorch.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
}

# BERT/ViT initialise weights with a truncated normal of std 0.02; so do we from scratch.
default_kernel_init = nn.initializers.truncated_normal(stddev=0.02)


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """Looks up an activation by its Hugging Face `hidden_act` name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"Unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) over the last axis (torch.nn.functional.normalize)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def partitioned(init: Callable, *names: str | None) -> Callable:
    """Wraps an initializer so the created param is boxed with logical axis `names`."""
    return nn.with_logical_partitioning(init, names)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Shape and numerics of a stack of transformer encoder layers.

    `norm_first=False` is the post-LN layout of BERT/RoBERTa; `True` is the pre-LN layout of
    ViT, CLIP and Whisper. `key_bias=False` drops the key projection's bias (Whisper).
    """

    hidden_size: int
    num_heads: int
    mlp_dim: int
    num_layers: int
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    norm_first: bool = False
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    key_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        activation_fn(self.activation)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def encoder_config(tower_config: Any, **layout: Any) -> EncoderConfig:
    """The EncoderConfig of a tower config: every field the two share by name, plus the
    tower's fixed layout choices (e.g. norm_first=True), which win over shared fields."""
    shared = {
        field.name: getattr(tower_config, field.name)
        for field in dataclasses.fields(EncoderConfig)
        if field.name not in layout and hasattr(tower_config, field.name)
    }
    return EncoderConfig(**shared, **layout)


def layer_norm(config: EncoderConfig, name: str) -> nn.LayerNorm:
    """LayerNorm over "embed" with the config's epsilon and dtypes."""
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        scale_init=partitioned(nn.initializers.ones, "embed"),
        bias_init=partitioned(nn.initializers.zeros, "embed"),
        name=name,
    )


def attention_bias(mask: jax.Array | None) -> jax.Array | None:
    """Key-padding mask [B, L] (1 = keep) -> additive float32 bias [B, 1, 1, L]."""
    if mask is None:
        return None
    return jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)


class MultiHeadAttention(nn.Module):
    """Bidirectional multi-head self-attention with a key-padding mask."""

    config: EncoderConfig

    def _projection(self, name: str, use_bias: bool = True) -> nn.DenseGeneral:
        cfg = self.config
        return nn.DenseGeneral(
            features=(cfg.num_heads, cfg.head_dim),
            use_bias=use_bias,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            kernel_init=partitioned(default_kernel_init, "embed", "heads", "kv"),
            bias_init=partitioned(nn.initializers.zeros, "heads", "kv"),
            name=name,
        )

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, train: bool = False) -> jax.Array:
        """x: [B, L, embed], mask: [B, L] (1 = real token) or None -> [B, L, embed]."""
        cfg = self.config
        query = self._projection("query")(x)
        key = self._projection("key", use_bias=cfg.key_bias)(x)
        value = self._projection("value")(x)
        query = query / jnp.asarray(math.sqrt(cfg.head_dim), query.dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32)
        bias = attention_bias(mask)
        if bias is not None:
            logits = logits + bias
        probs = jax.nn.softmax(logits, axis=-1).astype(cfg.dtype)
        probs = nn.Dropout(cfg.attention_dropout_rate)(probs, deterministic=not train)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, value)
        return nn.DenseGeneral(
            features=cfg.hidden_size,
            axis=(-2, -1),
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            kernel_init=partitioned(default_kernel_init, "heads", "kv", "embed"),
            bias_init=partitioned(nn.initializers.zeros, "embed"),
            name="out",
        )(context)


class MlpBlock(nn.Module):
    """Position-wise feed-forward block: embed -> mlp -> activation -> embed."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """x: [..., embed] -> [..., embed]."""
        cfg = self.config
        dense = lambda features, axes, name: nn.Dense(
            features,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            kernel_init=partitioned(default_kernel_init, *axes),
            bias_init=partitioned(nn.initializers.zeros, axes[-1]),
            name=name,
        )
        x = dense(cfg.mlp_dim, ("embed", "mlp"), "fc1")(x)
        x = activation_fn(cfg.activation)(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=not train)
        return dense(cfg.hidden_size, ("mlp", "embed"), "fc2")(x)


class EncoderLayer(nn.Module):
    """One transformer encoder layer, pre-LN or post-LN by `config.norm_first`."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, train: bool = False) -> jax.Array:
        """x: [B, L, embed], mask: [B, L] or None -> [B, L, embed]."""
        cfg = self.config
        attention = MultiHeadAttention(cfg, name="attention")
        mlp = MlpBlock(cfg, name="mlp")
        attention_norm = layer_norm(cfg, "attention_norm")
        mlp_norm = layer_norm(cfg, "mlp_norm")
        dropout = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=not train)
        if cfg.norm_first:
            x = x + dropout(attention(attention_norm(x), mask, train))
            return x + dropout(mlp(mlp_norm(x), train))
        x = attention_norm(x + dropout(attention(x, mask, train)))
        return mlp_norm(x + dropout(mlp(x, train)))


class Encoder(nn.Module):
    """`config.num_layers` encoder layers named layer_0 ... layer_{n-1}.

    With `config.remat`, each layer's activations are recomputed in the backward pass.
    No final norm: pre-LN towers apply their own (ViT on the sequence, CLIP on the pooled).
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, train: bool = False) -> jax.Array:
        """x: [B, L, embed], mask: [B, L] or None -> [B, L, embed]."""
        # static_argnums counts the module as argument 0: `train` is argument 3.
        layer_cls = EncoderLayer
        if self.config.remat:
            layer_cls = nn.remat(EncoderLayer, static_argnums=(3,))
        for i in range(self.config.num_layers):
            x = layer_cls(self.config, name=f"layer_{i}")(x, mask, train)
        return x
