"""Image towers: a ViT that loads Hugging Face ViTModel and CLIPVisionModel checkpoints,
and small from-scratch configurations (tiny_vit, small_cnn) for CPU demos."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cwcl_jax.models import layers, loading

LAYOUTS = ("vit", "clip")
POOLINGS = ("cls", "mean", "pooler")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """A pre-LN vision transformer.

    layout "vit" (HF ViTModel): patch conv with bias, final norm over the whole sequence.
    layout "clip" (HF CLIPVisionModel): patch conv without bias, a norm before the encoder,
      final norm on the pooled vector only.
    pooling: "cls" (class token), "mean" (over patch tokens) or "pooler" (ViT's dense + tanh
      on the class token; layout "vit" only).
    """

    image_size: int
    patch_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    layout: str = "vit"
    pooling: str = "cls"
    num_channels: int = 3
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"ViTConfig.layout={self.layout!r}; supported: {LAYOUTS}")
        if self.pooling not in POOLINGS or (self.pooling, self.layout) == ("pooler", "clip"):
            raise ValueError(
                f"ViTConfig.pooling={self.pooling!r} with layout {self.layout!r}; supported: "
                f"{POOLINGS} ('pooler' for layout 'vit' only)"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ViTConfig: image_size={self.image_size} is not divisible by "
                f"patch_size={self.patch_size}"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def encoder(self) -> layers.EncoderConfig:
        return layers.encoder_config(self, norm_first=True)


def check_pixels(inputs: dict, image_size: int, channels: int = 3) -> jax.Array:
    """inputs["pixels"] if it is float [B, image_size, image_size, channels], else ValueError."""
    if "pixels" not in inputs:
        raise ValueError(f"image inputs lack 'pixels'; got keys {sorted(inputs)}")
    pixels = inputs["pixels"]
    expected = (image_size, image_size, channels)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
        raise ValueError(
            f"image inputs: pixels has shape {tuple(pixels.shape)}, expected [batch, "
            f"{image_size}, {image_size}, {channels}] (NHWC)"
        )
    if not jnp.issubdtype(pixels.dtype, jnp.floating):
        raise ValueError(f"image inputs: pixels must be normalized floats, got {pixels.dtype}")
    return pixels


class VisionTransformer(nn.Module):
    """{"pixels": [B, H, W, C]} -> pooled features [B, hidden]."""

    config: ViTConfig

    def setup(self):
        cfg, enc = self.config, self.config.encoder()
        self.patch_embed = nn.Conv(
            cfg.hidden_size,
            (cfg.patch_size, cfg.patch_size),
            strides=cfg.patch_size,
            padding="VALID",
            use_bias=cfg.layout == "vit",
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            kernel_init=layers.partitioned(layers.default_kernel_init, None, None, None, "embed"),
            bias_init=layers.partitioned(nn.initializers.zeros, "embed"),
        )
        init = layers.partitioned(layers.default_kernel_init, "embed")
        self.cls_token = self.param("cls_token", init, (cfg.hidden_size,), cfg.param_dtype)
        pos_init = layers.partitioned(layers.default_kernel_init, "positions", "embed")
        shape = (cfg.num_patches + 1, cfg.hidden_size)
        self.position_embedding = self.param("position_embedding", pos_init, shape, cfg.param_dtype)
        if cfg.layout == "clip":
            self.pre_norm = layers.layer_norm(enc, "pre_norm")
        self.encoder = layers.Encoder(enc)
        self.final_norm = layers.layer_norm(enc, "final_norm")
        if cfg.pooling == "pooler":
            self.pooler = nn.Dense(
                cfg.hidden_size,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                kernel_init=layers.partitioned(layers.default_kernel_init, "embed", "mlp"),
                bias_init=layers.partitioned(nn.initializers.zeros, "mlp"),
            )
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def token_features(self, inputs: dict, *, train: bool = False) -> jax.Array:
        """[B, 1 + patches, hidden]: HF's last_hidden_state (ViT: after the final norm;
        CLIP: before its post-layernorm)."""
        cfg = self.config
        pixels = check_pixels(inputs, cfg.image_size, cfg.num_channels)
        patches = self.patch_embed(pixels.astype(cfg.dtype))
        patches = patches.reshape(patches.shape[0], -1, cfg.hidden_size)
        cls = jnp.broadcast_to(
            self.cls_token.astype(cfg.dtype), (patches.shape[0], 1, cfg.hidden_size)
        )
        x = jnp.concatenate([cls, patches], axis=1) + self.position_embedding.astype(cfg.dtype)
        x = self.dropout(x, deterministic=not train)
        if cfg.layout == "clip":
            x = self.pre_norm(x)
        x = self.encoder(x, None, train)
        return self.final_norm(x) if cfg.layout == "vit" else x

    def __call__(self, inputs: dict, *, train: bool = False) -> jax.Array:
        """Pooled float32 features [B, hidden]."""
        cfg = self.config
        tokens = self.token_features(inputs, train=train)
        pooled = tokens[:, 0] if cfg.pooling != "mean" else jnp.mean(tokens[:, 1:], axis=1)
        if cfg.pooling == "pooler":
            pooled = jnp.tanh(self.pooler(pooled))
        if cfg.layout == "clip":
            pooled = self.final_norm(pooled)
        return pooled.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    """A small conv net: per stage a stride-2 3x3 conv and a 3x3 conv, each GroupNorm+GELU.

    GroupNorm instead of BatchNorm keeps the tower free of mutable batch statistics.
    """

    image_size: int = 64
    channels: tuple[int, ...] = (32, 64, 128, 256)
    num_groups: int = 8
    num_channels: int = 3
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False

    def __post_init__(self):
        bad = [c for c in self.channels if c % self.num_groups]
        if bad:
            raise ValueError(f"CNNConfig: channels {bad} not divisible by num_groups")


class ConvBlock(nn.Module):
    """conv 3x3 (stride) -> GroupNorm -> GELU, [B, H, W, C] -> [B, H/stride, W/stride, F]."""

    features: int
    strides: int
    config: CNNConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        x = nn.Conv(
            self.features,
            (3, 3),
            strides=self.strides,
            use_bias=False,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            kernel_init=layers.partitioned(
                nn.initializers.he_normal(), None, None, "conv_in", "conv_out"
            ),
        )(x)
        x = nn.GroupNorm(
            cfg.num_groups,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            scale_init=layers.partitioned(nn.initializers.ones, "conv_out"),
            bias_init=layers.partitioned(nn.initializers.zeros, "conv_out"),
        )(x)
        return nn.gelu(x)


class SmallCNN(nn.Module):
    """{"pixels": [B, H, W, C]} -> globally average-pooled features [B, channels[-1]]."""

    config: CNNConfig

    @nn.compact
    def __call__(self, inputs: dict, *, train: bool = False) -> jax.Array:
        del train  # no dropout or batch statistics
        cfg = self.config
        x = check_pixels(inputs, cfg.image_size, cfg.num_channels).astype(cfg.dtype)
        block = nn.remat(ConvBlock) if cfg.remat else ConvBlock
        for i, features in enumerate(cfg.channels):
            x = block(features, 2, cfg, name=f"stage_{i}_down")(x)
            x = block(features, 1, cfg, name=f"stage_{i}_conv")(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


TINY_VIT = ViTConfig(
    image_size=64,
    patch_size=8,
    hidden_size=128,
    num_layers=4,
    num_heads=4,
    mlp_dim=512,
    pooling="mean",
    layer_norm_eps=1e-6,
)
SMALL_CNN = CNNConfig()


# --- Hugging Face checkpoints -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageProcessor:
    """How a tower expects its pixels: image_size x image_size, (x * rescale - mean) / std."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale_factor: float = 1 / 255

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8-range images [B, H, W, C] -> float32 normalized pixels [B, H, W, C]."""
        scaled = np.asarray(images, np.float32) * self.rescale_factor
        return (scaled - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


# transformers' defaults when a checkpoint has no preprocessor_config.json.
_DEFAULT_MEAN_STD = {
    "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}

VIT_LAYER = {
    "attention/query": "attention.attention.query",
    "attention/key": "attention.attention.key",
    "attention/value": "attention.attention.value",
    "attention/out": "attention.output.dense",
    "attention_norm": "layernorm_before",
    "mlp/fc1": "intermediate.dense",
    "mlp/fc2": "output.dense",
    "mlp_norm": "layernorm_after",
}
VIT_RULES = (
    *loading.module_rules("patch_embed", "embeddings.patch_embeddings.projection", loading.conv2d),
    loading.Rule("cls_token", "embeddings.cls_token"),
    loading.Rule("position_embedding", "embeddings.position_embeddings"),
    *loading.encoder_rules("encoder", "encoder.layer.{i}", VIT_LAYER),
    *loading.module_rules("final_norm", "layernorm"),
    *loading.module_rules("pooler", "pooler.dense"),
)
VIT_IGNORE = (r"(vit\.)?pooler\.dense\.(weight|bias)", r".*mask_token", r"classifier\..*")

CLIP_LAYER = {
    "attention/query": "self_attn.q_proj",
    "attention/key": "self_attn.k_proj",
    "attention/value": "self_attn.v_proj",
    "attention/out": "self_attn.out_proj",
    "attention_norm": "layer_norm1",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
    "mlp_norm": "layer_norm2",
}
CLIP_RULES = (
    *loading.module_rules("patch_embed", "embeddings.patch_embedding", loading.conv2d),
    loading.Rule("cls_token", "embeddings.class_embedding"),
    loading.Rule("position_embedding", "embeddings.position_embedding.weight"),
    *loading.module_rules("pre_norm", "pre_layrnorm"),
    *loading.encoder_rules("encoder", "encoder.layers.{i}", CLIP_LAYER),
    *loading.module_rules("final_norm", "post_layernorm"),
)
CLIP_IGNORE = (r".*position_ids", r"visual_projection\..*")


def vit_config_from_hf(config: dict, source: str, layout: str) -> ViTConfig:
    """ViTConfig from a ViT or CLIP-vision config.json dict."""
    get = lambda key, *default: loading.config_value(config, key, source, *default)
    if not get("qkv_bias", True):
        raise ValueError(f"{source}: qkv_bias=false is not supported")
    is_vit = layout == "vit"
    return ViTConfig(
        image_size=get("image_size"),
        patch_size=get("patch_size"),
        hidden_size=get("hidden_size"),
        num_layers=get("num_hidden_layers"),
        num_heads=get("num_attention_heads"),
        mlp_dim=get("intermediate_size"),
        layout=layout,
        num_channels=get("num_channels", 3),
        activation=get("hidden_act", "gelu" if is_vit else "quick_gelu"),
        layer_norm_eps=get("layer_norm_eps", 1e-12 if is_vit else 1e-5),
        dropout_rate=get("hidden_dropout_prob", 0.0) if is_vit else 0.0,
        attention_dropout_rate=get(
            "attention_probs_dropout_prob" if is_vit else "attention_dropout", 0.0
        ),
    )


def _build_vit(layout: str):
    def build(checkpoint_dir: Path, config: dict, **overrides: Any) -> VisionTransformer:
        vit_config = vit_config_from_hf(config, str(checkpoint_dir / "config.json"), layout)
        return VisionTransformer(loading.replace_fields(vit_config, overrides, "load_pretrained"))

    return build


def _processor_size(preprocessor: dict) -> int | None:
    """The square crop/resize size a preprocessor_config.json produces, if it states one."""
    size = preprocessor.get("crop_size") if preprocessor.get("do_center_crop") else None
    size = size or preprocessor.get("size")
    if isinstance(size, dict):
        size = size.get("height", size.get("shortest_edge"))
    return size


def load_image_processor(layout: str):
    def load(checkpoint_dir: Path, config: dict) -> ImageProcessor:
        image_size = config["image_size"]
        mean, std = _DEFAULT_MEAN_STD[layout]
        path = checkpoint_dir / "preprocessor_config.json"
        preprocessor = loading.read_json(path) if path.is_file() else {}
        size = _processor_size(preprocessor)
        if size is not None and size != image_size:
            raise ValueError(
                f"{path}: images are cropped to {size}, but config.json has image_size={image_size}"
            )
        return ImageProcessor(
            image_size=image_size,
            mean=tuple(preprocessor.get("image_mean", mean)),
            std=tuple(preprocessor.get("image_std", std)),
            rescale_factor=preprocessor.get("rescale_factor", 1 / 255),
        )

    return load


def example_image_inputs(module: VisionTransformer) -> dict:
    cfg = module.config
    return {"pixels": jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels))}


for _model_type, _layout, _rules, _ignore, _prefixes in (
    ("vit", "vit", VIT_RULES, VIT_IGNORE, ("", "vit.")),
    ("clip_vision_model", "clip", CLIP_RULES, CLIP_IGNORE, ("vision_model.", "")),
):
    loading.register_converter(
        _model_type,
        loading.Converter(
            modality="image",
            build_module=_build_vit(_layout),
            example_inputs=example_image_inputs,
            rules=_rules,
            load_processor=load_image_processor(_layout),
            ignore=_ignore,
            prefixes=_prefixes,
        ),
    )
