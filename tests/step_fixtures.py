"""Tiny towers and step ingredients shared by the train-step and accumulation tests."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cwcl_jax import losses, sharding, train
from cwcl_jax.models import TwoTower
from cwcl_jax.train_step import StepParts

OPTIMIZER = {
    "learning_rate": 1e-2,
    "warmup_steps": 1,
    "end_learning_rate_ratio": 0.0,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-8,
    "weight_decay": 1e-4,
    "weight_decay_pattern": r".*/(kernel|embedding)",
    "grad_clip_norm": 1.0,
}


class TinyTower(nn.Module):
    """{"x": [B, F]} -> [B, out]; dropout so the tests see the per-micro-batch keys."""

    out: int = 6
    dropout: float = 0.0

    @nn.compact
    def __call__(self, inputs: dict, *, train: bool = False) -> jax.Array:
        x = nn.tanh(nn.Dense(8)(inputs["x"]))
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(self.out)(x)


def make_batch(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": {"x": jnp.asarray(rng.normal(size=(n, 5)), jnp.float32)},
        "text": {"x": jnp.asarray(rng.normal(size=(n, 3)), jnp.float32)},
    }


def make_parts(
    loss: losses.LossConfig | None = None,
    *,
    accum_steps: int = 1,
    frozen_head: bool = False,
    dropout: float = 0.0,
    mesh=None,
    total_steps: int = 10,
) -> StepParts:
    loss = loss or losses.LossConfig()
    if mesh is not None and sharding.num_batch_shards(mesh) > 1:
        loss_fn = losses.make_sharded_two_tower_loss(mesh, loss)
    else:
        loss_fn = lambda *a, **k: losses.two_tower_loss(*a, **k, config=loss)
    model = TwoTower(
        trainable_tower=TinyTower(dropout=dropout),
        frozen_dim=6,
        embed_dim=4 if frozen_head else None,
        frozen_head=frozen_head,
        use_bias=loss.name == "siglip",
    )
    return StepParts(
        model=model,
        frozen_module=TinyTower(),
        loss_fn=loss_fn,
        optimizer=train.make_optimizer(OPTIMIZER, total_steps),
        learning_rate=train.learning_rate_schedule(OPTIMIZER, total_steps),
        trainable_key="image",
        frozen_key="text",
        accum_steps=accum_steps,
        mesh=mesh,
    )


def init_params(parts: StepParts, batch: dict, seed: int = 1):
    """(trainable params, frozen params), unboxed."""
    frozen = parts.frozen_module.init(jax.random.key(seed), batch["text"])["params"]
    raw = jnp.zeros((1, parts.model.frozen_dim))
    first = jax.tree.map(lambda x: x[:1], batch["image"])
    params = parts.model.init(jax.random.key(seed + 1), first, raw)["params"]
    return nn.unbox(params), nn.unbox(frozen)


def init_state(parts: StepParts, batch: dict, seed: int = 1) -> tuple[train.TrainState, dict]:
    params, frozen = init_params(parts, batch, seed)
    state = train.create_train_state(lambda _: params, parts.optimizer, seed)
    return state, frozen


def with_accum(parts: StepParts, accum_steps: int) -> StepParts:
    return dataclasses.replace(parts, accum_steps=accum_steps)
