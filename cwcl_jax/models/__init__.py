"""Towers: pretrained Hugging Face checkpoints as Flax modules, from-scratch demo towers, and
the two-tower model that joins a frozen tower to a trainable one.

Every tower maps an inputs dict to pooled features [batch, hidden]:
  text   {"input_ids": int32 [B, L], "attention_mask": int32 [B, L]}
  image  {"pixels": float32 [B, H, W, 3]} (normalized with the tower's mean/std)
  speech {"mel": float32 [B, T, n_mels], "mel_mask": int32 [B, T]}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from cwcl_jax.models import speech, text, vision
from cwcl_jax.models.loading import (
    CheckpointMismatchError,
    Converter,
    Pretrained,
    load_pretrained,
    register_converter,
    replace_fields,
    supported_model_types,
)
from cwcl_jax.models.text import TextConfig, TextEncoder, encode_texts, make_text_encoder
from cwcl_jax.models.two_tower import TwoTower, frozen_features
from cwcl_jax.models.vision import ImageProcessor, SmallCNN, VisionTransformer, ViTConfig

# (modality, arch) -> (default config, module class). Overrides replace config fields.
_TOWERS: dict[tuple[str, str], tuple[Any, Callable[[Any], nn.Module]]] = {
    ("text", "tiny_bert"): (text.TINY_BERT, TextEncoder),
    ("image", "tiny_vit"): (vision.TINY_VIT, VisionTransformer),
    ("image", "small_cnn"): (vision.SMALL_CNN, SmallCNN),
}


def register_tower(modality: str, arch: str, config: Any, module_cls: Callable) -> None:
    """Makes `build_tower(modality, arch)` build `module_cls(config)` (config: a dataclass)."""
    _TOWERS[(modality, arch)] = (config, module_cls)


def build_tower(modality: str, arch: str, **overrides: Any) -> nn.Module:
    """A from-scratch tower, e.g. build_tower("image", "tiny_vit", dtype=jnp.bfloat16)."""
    if (modality, arch) not in _TOWERS:
        known = ", ".join(f"{m}/{a}" for m, a in sorted(_TOWERS))
        raise ValueError(f"unknown tower {modality}/{arch}; known: {known}")
    config, module_cls = _TOWERS[(modality, arch)]
    return module_cls(replace_fields(config, overrides, f"build_tower({modality!r}, {arch!r})"))


for _arch, _config in speech.SPEECH_ARCHS.items():
    register_tower("speech", _arch, _config, speech.SpeechEncoder)

__all__ = [
    "CheckpointMismatchError",
    "Converter",
    "ImageProcessor",
    "Pretrained",
    "SmallCNN",
    "TextConfig",
    "TextEncoder",
    "TwoTower",
    "ViTConfig",
    "VisionTransformer",
    "build_tower",
    "encode_texts",
    "frozen_features",
    "load_pretrained",
    "make_text_encoder",
    "register_converter",
    "register_tower",
    "supported_model_types",
]
