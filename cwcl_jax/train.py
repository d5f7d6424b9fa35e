"""Train state and optimizer: AdamW + warmup-cosine schedule + global-norm clipping.

The state holds only what training changes (trainable params, optimizer state, step, rng);
the frozen tower's params are a separate tree, never seen by the optimizer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

OPTIMIZER_FIELDS = (
    "learning_rate",
    "warmup_steps",
    "end_learning_rate_ratio",
    "b1",
    "b2",
    "eps",
    "weight_decay",
    "weight_decay_pattern",
    "grad_clip_norm",
)


class TrainState(flax.struct.PyTreeNode):
    """Everything a train step updates; checkpointed as one pytree."""

    step: jax.Array  # int32 []
    params: Any  # trainable params (TwoTower: tower, heads, temperature, bias)
    opt_state: Any
    rng: jax.Array  # uint32 [2] raw key data; per-step keys are fold_in(rng, step)


def learning_rate_schedule(opt: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then cosine decay to `end_learning_rate_ratio`."""
    if not 0 <= opt["warmup_steps"] < total_steps:
        raise ValueError(
            f"config.optimizer.warmup_steps={opt['warmup_steps']} must be in "
            f"[0, total_steps={total_steps})"
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt["learning_rate"],
        warmup_steps=opt["warmup_steps"],
        decay_steps=total_steps,
        end_value=opt["learning_rate"] * opt["end_learning_rate_ratio"],
    )


def weight_decay_mask(params: Any, pattern: str) -> Any:
    """True for params whose '/'-joined path fully matches `pattern` (kernels, embeddings).

    Biases, norm scales and the temperature/bias scalars do not match, so get no decay.
    """
    regex = re.compile(pattern)

    def decays(path: tuple, _: Any) -> bool:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return regex.fullmatch(name) is not None

    # Boxed (nn.Partitioned) params at init get one mask entry per box: a prefix tree.
    is_box = lambda x: isinstance(x, nn.Partitioned)
    return jax.tree_util.tree_map_with_path(decays, params, is_leaf=is_box)


def make_optimizer(opt: Mapping[str, Any], total_steps: int) -> optax.GradientTransformation:
    """AdamW on the trainable params, gradients clipped to `grad_clip_norm` first."""
    missing = [f for f in OPTIMIZER_FIELDS if f not in opt]
    if missing:
        raise ValueError(f"config.optimizer is missing {missing}")
    re.compile(opt["weight_decay_pattern"])
    schedule = learning_rate_schedule(opt, total_steps)
    adamw = optax.adamw(
        schedule,
        b1=opt["b1"],
        b2=opt["b2"],
        eps=opt["eps"],
        weight_decay=opt["weight_decay"],
        mask=lambda params: weight_decay_mask(params, opt["weight_decay_pattern"]),
    )
    return optax.chain(optax.clip_by_global_norm(opt["grad_clip_norm"]), adamw)


def create_train_state(
    init_params: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation, seed: int
) -> TrainState:
    """A fresh state; `init_params(key)` returns the unboxed trainable params tree.

    Meant to run under `jax.jit(..., out_shardings=...)` so every leaf is born sharded.
    """
    init_key, train_key = jax.random.split(jax.random.key(seed))
    params = init_params(init_key)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(train_key),
    )


def step_key(state: TrainState) -> jax.Array:
    """The PRNG key of this step (dropout etc.), the same after a resume."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
