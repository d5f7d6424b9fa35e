"""Whisper-layout speech tower: log-mel [B, T, n_mels] -> pooled [B, hidden].

Two conv1d (kernel 3; the second with stride 2, halving the frame rate to 50 Hz), GELU
after each, positions (fixed sinusoids or a learned table), pre-LN transformer layers
from `layers.py`, a final LayerNorm, then a mean over the valid frames.

Unlike Hugging Face's WhisperEncoder, which only accepts exactly 3000 frames (30 s) and
ignores any attention mask, this tower takes any T <= 2 * max_positions and honours
`mel_mask` in attention and pooling, so short clips train without 30 s of padding. Padding
frames still pass through the convolutions, which is what Whisper saw in pre-training.

The Whisper encoder converter (registered for `model_type == "whisper"`) loads the encoder
of a WhisperModel / WhisperForConditionalGeneration / WhisperForAudioClassification
safetensors checkpoint and ignores the decoder and heads.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cwcl_jax.audio import LogMelConfig
from cwcl_jax.models import layers, loading
from cwcl_jax.models.text import pool_tokens

POSITION_EMBEDDINGS = ("sinusoidal", "learned")
# Two convs with padding 1, strides 1 and 2: T mel frames -> ceil(T / 2) encoder frames.
SUBSAMPLING = 2


@dataclasses.dataclass(frozen=True)
class SpeechConfig:
    """Shape and numerics of the speech tower.

    max_positions: longest encoder sequence (after subsampling); inputs may have up to
      2 * max_positions mel frames (Whisper: 1500 positions = 3000 frames = 30 s).
    position_embedding: "sinusoidal" (fixed, Whisper's table, no params) or "learned"
      (a table initialised with the same sinusoids; Whisper checkpoints load into it).
    """

    n_mels: int = 80
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 512
    max_positions: int = 1500
    position_embedding: str = "sinusoidal"
    activation: str = "gelu"
    layer_norm_eps: float = 1e-5
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False

    def __post_init__(self):
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(
                f"SpeechConfig.position_embedding={self.position_embedding!r}; "
                f"supported: {POSITION_EMBEDDINGS}"
            )
        if self.hidden_size % 2 or self.hidden_size < 4:
            raise ValueError(
                f"SpeechConfig.hidden_size={self.hidden_size} must be even and >= 4 "
                "(sinusoidal positions use hidden_size / 2 frequencies)"
            )
        self.encoder()  # validates heads / activation up front

    @property
    def max_frames(self) -> int:
        """Longest mel input, in frames."""
        return SUBSAMPLING * self.max_positions

    def encoder(self) -> layers.EncoderConfig:
        # A key bias adds the same logit to every key of a query: softmax ignores it.
        return layers.encoder_config(self, norm_first=True, key_bias=False)


# From-scratch towers for CPU demos (2-4 s keyword clips, 80 mels); `cwcl_jax.models`
# registers them as build_tower("speech", name, **SpeechConfig overrides).
SPEECH_ARCHS: dict[str, SpeechConfig] = {
    "tiny": SpeechConfig(hidden_size=128, num_layers=2, num_heads=4, mlp_dim=512),
    "small": SpeechConfig(hidden_size=256, num_layers=4, num_heads=4, mlp_dim=1024),
}


def sinusoids(length: int, channels: int, max_timescale: float = 10_000.0) -> np.ndarray:
    """Whisper's position table: float32 [length, channels], sines then cosines."""
    log_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-log_increment * np.arange(channels // 2))
    scaled_time = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1).astype(np.float32)


def subsample_mask(mel_mask: jax.Array) -> jax.Array:
    """Frame mask [B, T] -> encoder-frame mask [B, ceil(T / 2)].

    Encoder frame j is centred on mel frame 2j, so it is valid when mel frame 2j is.
    """
    return mel_mask[:, ::SUBSAMPLING]


def check_speech_inputs(inputs: dict, config: SpeechConfig) -> None:
    """Raises ValueError unless inputs holds mel [B, T, n_mels] and mel_mask [B, T]."""
    missing = [k for k in ("mel", "mel_mask") if k not in inputs]
    if missing:
        raise ValueError(f"speech inputs lack {missing}; got keys {sorted(inputs)}")
    mel, mask = inputs["mel"], inputs["mel_mask"]
    if mel.ndim != 3 or mel.shape[-1] != config.n_mels:
        raise ValueError(
            f"speech inputs: mel has shape {mel.shape}, expected [batch, frames, {config.n_mels}]"
        )
    if mask.shape != mel.shape[:2]:
        raise ValueError(
            f"speech inputs: mel_mask has shape {mask.shape}, expected {mel.shape[:2]} "
            "([batch, frames] of mel)"
        )
    if mel.shape[1] > config.max_frames:
        raise ValueError(
            f"speech inputs: {mel.shape[1]} mel frames exceed the tower's maximum "
            f"{config.max_frames} (2 * max_positions={config.max_positions})"
        )


def _sinusoid_init(key: jax.Array, shape: tuple[int, int], dtype: Any) -> jax.Array:
    del key  # deterministic, like Whisper's table
    return jnp.asarray(sinusoids(*shape), dtype)


class SpeechEncoder(nn.Module):
    """{"mel": [B, T, n_mels], "mel_mask": [B, T]} -> pooled float32 [B, hidden]."""

    config: SpeechConfig

    def _conv(self, stride: int, name: str) -> nn.Conv:
        cfg = self.config
        return nn.Conv(
            cfg.hidden_size,
            kernel_size=(3,),
            strides=(stride,),
            padding=((1, 1),),
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            # Fan-in scaling keeps conv features at unit scale next to the +-1 sinusoids.
            kernel_init=layers.partitioned(
                nn.initializers.lecun_normal(), None, "conv_in", "conv_out"
            ),
            bias_init=layers.partitioned(nn.initializers.zeros, "conv_out"),
            name=name,
        )

    def setup(self):
        cfg = self.config
        self.conv1 = self._conv(1, "conv1")
        self.conv2 = self._conv(SUBSAMPLING, "conv2")
        if cfg.position_embedding == "learned":
            self.position_embedding = self.param(
                "position_embedding",
                layers.partitioned(_sinusoid_init, "positions", "embed"),
                (cfg.max_positions, cfg.hidden_size),
                cfg.param_dtype,
            )
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.encoder = layers.Encoder(cfg.encoder())
        self.final_norm = layers.layer_norm(cfg.encoder(), "final_norm")

    def _positions(self, length: int) -> jax.Array:
        if self.config.position_embedding == "learned":
            return self.position_embedding[:length]
        return jnp.asarray(sinusoids(length, self.config.hidden_size))

    def frame_features(self, inputs: dict, *, train: bool = False) -> jax.Array:
        """Final hidden states [B, ceil(T / 2), hidden] (Hugging Face's last_hidden_state)."""
        check_speech_inputs(inputs, self.config)
        cfg = self.config
        # Whisper's convs use exact GELU whatever the layers' activation_function says.
        gelu = lambda x: nn.gelu(x, approximate=False)
        x = gelu(self.conv1(inputs["mel"].astype(cfg.dtype)))
        x = gelu(self.conv2(x))
        x = x + self._positions(x.shape[1]).astype(cfg.dtype)
        x = self.dropout(x, deterministic=not train)
        x = self.encoder(x, subsample_mask(inputs["mel_mask"]), train)
        return self.final_norm(x)

    def __call__(self, inputs: dict, *, train: bool = False) -> jax.Array:
        """Mean of the final hidden states over valid encoder frames: float32 [B, hidden]."""
        frames = self.frame_features(inputs, train=train)
        return pool_tokens(frames.astype(jnp.float32), subsample_mask(inputs["mel_mask"]), "mean")


# ---- Hugging Face Whisper checkpoints ----


def speech_config_from_whisper(config: dict, source: str, **overrides: Any) -> SpeechConfig:
    """SpeechConfig of the encoder in a Whisper config.json (learned positions)."""
    value = lambda key, default=...: loading.config_value(config, key, source, default)
    speech = SpeechConfig(
        n_mels=value("num_mel_bins"),
        hidden_size=value("d_model"),
        num_layers=value("encoder_layers"),
        num_heads=value("encoder_attention_heads"),
        mlp_dim=value("encoder_ffn_dim"),
        max_positions=value("max_source_positions"),
        position_embedding="learned",
        activation=value("activation_function", "gelu"),
        dropout_rate=value("dropout", 0.0),
        attention_dropout_rate=value("attention_dropout", 0.0),
    )
    return loading.replace_fields(speech, overrides, source)


def _build_whisper(checkpoint_dir: Path, config: dict, **overrides: Any) -> SpeechEncoder:
    source = str(checkpoint_dir / "config.json")
    return SpeechEncoder(speech_config_from_whisper(config, source, **overrides))


def _example_inputs(module: SpeechEncoder) -> dict:
    frames = SUBSAMPLING  # parameter shapes do not depend on the length
    return {
        "mel": jnp.zeros((1, frames, module.config.n_mels), jnp.float32),
        "mel_mask": jnp.ones((1, frames), jnp.int32),
    }


def _load_log_mel_config(checkpoint_dir: Path, config: dict) -> LogMelConfig:
    """preprocessor_config.json as a LogMelConfig; Whisper's defaults if the file is absent."""
    path = checkpoint_dir / "preprocessor_config.json"
    n_mels = config["num_mel_bins"]
    if not path.is_file():
        return LogMelConfig(n_mels=n_mels, max_frames=SUBSAMPLING * config["max_source_positions"])
    log_mel = LogMelConfig.from_preprocessor_config(loading.read_json(path))
    if log_mel.n_mels != n_mels:
        raise ValueError(
            f"{path}: feature_size={log_mel.n_mels} but config.json num_mel_bins={n_mels}"
        )
    return log_mel


_WHISPER_LAYER = {
    "attention/query": "self_attn.q_proj",
    "attention/key": "self_attn.k_proj",
    "attention/value": "self_attn.v_proj",
    "attention/out": "self_attn.out_proj",
    "attention_norm": "self_attn_layer_norm",
    "mlp/fc1": "fc1",
    "mlp/fc2": "fc2",
    "mlp_norm": "final_layer_norm",
}

WHISPER_CONVERTER = loading.Converter(
    modality="speech",
    build_module=_build_whisper,
    example_inputs=_example_inputs,
    rules=[
        *loading.module_rules("conv1", "conv1", kernel=loading.conv1d),
        *loading.module_rules("conv2", "conv2", kernel=loading.conv1d),
        loading.Rule("position_embedding", "embed_positions.weight"),
        *loading.encoder_rules("encoder", "layers.{i}", _WHISPER_LAYER),
        *loading.module_rules("final_norm", "layer_norm"),
    ],
    load_processor=_load_log_mel_config,
    # The decoder and the task heads of Whisper checkpoints are not part of the tower.
    ignore=(
        r"(model\.)?decoder\..*",
        r"proj_out\.weight",
        r"projector\..*",
        r"classifier\..*",
        r"layer_weights",
    ),
    prefixes=("model.encoder.", "encoder.", ""),
)
loading.register_converter("whisper", WHISPER_CONVERTER)
