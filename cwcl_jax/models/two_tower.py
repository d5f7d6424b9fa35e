"""The two-tower model: a trainable tower and head aligned to a frozen tower's embeddings.

The frozen tower is not part of this module. Its params are a separate tree, run through
`frozen_features` under stop_gradient (no backward pass, no optimizer state); its output
enters `TwoTower` as `frozen_raw`. Everything inside `TwoTower` is trainable.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cwcl_jax.models import layers


def frozen_features(module: nn.Module, params: Any, inputs: dict) -> jax.Array:
    """The frozen tower's pooled features float32 [B, D'], with no gradient path back."""
    features = module.apply({"params": params}, inputs, train=False)
    return jax.lax.stop_gradient(features.astype(jnp.float32))


class TwoTower(nn.Module):
    """Trainable tower + head, optional frozen-side head, learnable temperature (and bias).

    Attributes:
      trainable_tower: a tower module (inputs dict -> [B, hidden]); params under
        "trainable_tower", so pretrained weights can be dropped in as an initialization.
      frozen_dim: D', the width of the frozen tower's features.
      embed_dim: D, the joint embedding width. Without a frozen head it must be D' (the
        default), and `frozen` is just the normalized `frozen_raw`.
      frozen_head: add a trainable linear head on the frozen side (D' -> D).
      use_bias: learnable logit bias, for the sigmoid (SigLIP) loss.
      init_inverse_temperature: 1/tau at init (10, as in CLIP/LiT/SigLIP).
      temperature_range: tau is clipped to [min, max]; beyond it the gradient is zero.
        The lower end 0.01 is CLIP's clamp of 1/tau at 100.
      init_bias: initial logit bias (-10, as in SigLIP).
    """

    trainable_tower: nn.Module
    frozen_dim: int
    embed_dim: int | None = None
    frozen_head: bool = False
    use_bias: bool = False
    init_inverse_temperature: float = 10.0
    temperature_range: tuple[float, float] = (0.01, 1.0)
    init_bias: float = -10.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        if not self.frozen_head and self.embed_dim not in (None, self.frozen_dim):
            raise ValueError(
                f"TwoTower: embed_dim={self.embed_dim} differs from frozen_dim="
                f"{self.frozen_dim}; set frozen_head=True to project the frozen side too"
            )
        low, high = self.temperature_range
        if not 0 < low <= 1 / self.init_inverse_temperature <= high:
            raise ValueError(
                f"TwoTower: 1/init_inverse_temperature={1 / self.init_inverse_temperature} "
                f"must lie in temperature_range={self.temperature_range}"
            )
        dim = self.embed_dim or self.frozen_dim
        self.trainable_head = self._head(dim)
        if self.frozen_head:
            self.frozen_projection = self._head(dim)
        constant = lambda value: layers.partitioned(nn.initializers.constant(value))
        self.log_inverse_temperature = self.param(
            "log_inverse_temperature",
            constant(math.log(self.init_inverse_temperature)),
            (),
            jnp.float32,
        )
        if self.use_bias:
            self.bias = self.param("bias", constant(self.init_bias), (), jnp.float32)

    def _head(self, dim: int) -> nn.Dense:
        return nn.Dense(
            dim,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=layers.partitioned(nn.initializers.lecun_normal(), "embed", "mlp"),
        )

    def embed_trainable(self, inputs: dict, *, train: bool = False) -> jax.Array:
        """Trainable-side embeddings, L2-normalized float32 [B, D]."""
        features = self.trainable_tower(inputs, train=train)
        return layers.l2_normalize(self.trainable_head(features).astype(jnp.float32))

    def embed_frozen(self, frozen_raw: jax.Array) -> jax.Array:
        """Frozen-side embeddings [B, D] from the frozen tower's features [B, D']."""
        if frozen_raw.ndim != 2 or frozen_raw.shape[-1] != self.frozen_dim:
            raise ValueError(
                f"TwoTower: frozen_raw has shape {tuple(frozen_raw.shape)}, expected "
                f"[batch, frozen_dim={self.frozen_dim}]"
            )
        frozen_raw = jax.lax.stop_gradient(frozen_raw.astype(jnp.float32))
        if self.frozen_head:
            return layers.l2_normalize(self.frozen_projection(frozen_raw).astype(jnp.float32))
        return layers.l2_normalize(frozen_raw)

    def temperature(self) -> jax.Array:
        """tau = 1 / exp(log_inverse_temperature), clipped to temperature_range; shape ()."""
        low, high = self.temperature_range
        log_inverse = jnp.clip(self.log_inverse_temperature, -math.log(high), -math.log(low))
        return jnp.exp(-log_inverse)

    def __call__(
        self, trainable_inputs: dict, frozen_raw: jax.Array, *, train: bool = False
    ) -> dict[str, jax.Array | None]:
        """-> {"trainable": [B, D], "frozen": [B, D], "frozen_raw": [B, D'],
        "temperature": (), "bias": () or None}; the three embeddings L2-normalized."""
        return self.outputs(self.embed_trainable(trainable_inputs, train=train), frozen_raw)

    def outputs(self, trainable: jax.Array, frozen_raw: jax.Array) -> dict[str, jax.Array | None]:
        """The output dict of `__call__` from already computed trainable embeddings [B, D]
        (GradCache computes them micro-batch by micro-batch)."""
        frozen = self.embed_frozen(frozen_raw)
        if trainable.shape[0] != frozen.shape[0]:
            raise ValueError(
                f"TwoTower: trainable batch {trainable.shape[0]} != frozen_raw batch "
                f"{frozen_raw.shape[0]}"
            )
        raw = jax.lax.stop_gradient(frozen_raw.astype(jnp.float32))
        return {
            "trainable": trainable,
            "frozen": frozen,
            "frozen_raw": layers.l2_normalize(raw),
            "temperature": self.temperature(),
            "bias": self.bias if self.use_bias else None,
        }
