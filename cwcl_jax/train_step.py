"""The train step: frozen forward, trainable forward + backward, loss, AdamW update.

A batch that carries `frozen_raw` (float32 [B, D'], joined from the frozen cache by the
input pipeline) skips the frozen forward pass: those are the tower's outputs.

With `accum_steps > 1` the gradient is exact for the contrastive loss (GradCache, Gao et
al. 2021): the loss couples every pair in the batch, so per-micro-batch losses would be a
different objective. Instead:
  1. embed every micro-batch (frozen and trainable towers) without keeping activations;
  2. compute the full-batch loss and its gradient with respect to the trainable
     embeddings, the frozen-side head, the temperature and the bias;
  3. re-run each micro-batch's trainable forward under `jax.vjp` and pull the cached
     embedding gradients back into the params, summing over micro-batches.
Peak activation memory is one micro-batch; the cost is one extra trainable forward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cwcl_jax import sharding
from cwcl_jax.models import frozen_features
from cwcl_jax.train import TrainState, step_key

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
FROZEN_RAW = "frozen_raw"  # batch entry of cached frozen-tower outputs


@dataclasses.dataclass(frozen=True)
class StepParts:
    """The static ingredients of a train step.

    loss_fn: `(trainable, frozen, frozen_raw, *, temperature, bias) -> (loss, metrics)`,
      i.e. `two_tower_loss` with its config bound, or `make_sharded_two_tower_loss(...)`.
    trainable_key / frozen_key: the batch entries of each tower ("image", "text", ...).
    mesh: when given, micro-batches and embeddings are constrained to the batch sharding.
    """

    model: nn.Module  # TwoTower
    frozen_module: nn.Module
    loss_fn: LossFn
    optimizer: optax.GradientTransformation
    learning_rate: optax.Schedule
    trainable_key: str
    frozen_key: str
    accum_steps: int = 1
    mesh: Mesh | None = None


def _constrain(tree: Any, mesh: Mesh | None, spec: P) -> Any:
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, spec))


def split_micro_batches(tree: Any, accum_steps: int) -> Any:
    """[N, ...] -> [accum_steps, N / accum_steps, ...]; micro-batch a holds rows a::A.

    Strided rows keep each micro-batch spread over every device that holds the batch,
    with no data movement: a device's contiguous slice splits evenly across micro-batches.
    """
    return jax.tree.map(
        lambda x: x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1),
        tree,
    )


def merge_micro_batches(tree: Any) -> Any:
    """Inverse of `split_micro_batches`: [A, N / A, ...] -> [N, ...] in the original order."""
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:]), tree)


def _loss_from_outputs(parts: StepParts, outputs: dict) -> tuple[jax.Array, dict]:
    return parts.loss_fn(
        outputs["trainable"],
        outputs["frozen"],
        outputs["frozen_raw"],
        temperature=outputs["temperature"],
        bias=outputs["bias"],
    )


def frozen_raw_of(parts: StepParts, frozen_params: Any, batch: dict) -> jax.Array:
    """The frozen tower's features [B, D']: cached in the batch, or computed here."""
    if FROZEN_RAW in batch:
        return jax.lax.stop_gradient(batch[FROZEN_RAW].astype(jnp.float32))
    return frozen_features(parts.frozen_module, frozen_params, batch[parts.frozen_key])


def full_batch_grads(parts: StepParts, params: Any, frozen_params: Any, batch: dict, key):
    """One forward + backward over the whole batch -> (grads, loss, metrics)."""
    frozen_raw = frozen_raw_of(parts, frozen_params, batch)

    def loss_of(p):
        outputs = parts.model.apply(
            {"params": p}, batch[parts.trainable_key], frozen_raw, train=True,
            rngs={"dropout": key},
        )  # fmt: skip
        return _loss_from_outputs(parts, outputs)

    (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    return grads, loss, metrics


def _embed_trainable(parts: StepParts, params: Any, inputs: dict, key: jax.Array) -> jax.Array:
    return parts.model.apply(
        {"params": params}, inputs, train=True, rngs={"dropout": key},
        method=parts.model.embed_trainable,
    )  # fmt: skip


def accumulated_grads(parts: StepParts, params: Any, frozen_params: Any, batch: dict, key):
    """GradCache: the exact full-batch gradient, one micro-batch of activations at a time."""
    micro_spec = P(None, sharding.BATCH_AXES)
    micro = _constrain(split_micro_batches(batch, parts.accum_steps), parts.mesh, micro_spec)
    micro_keys = jax.random.split(key, parts.accum_steps)

    def embed(args):  # 1. forward only: nothing is differentiated, no activations kept
        inputs, micro_key = args
        raw = frozen_raw_of(parts, frozen_params, inputs)
        return _embed_trainable(parts, params, inputs[parts.trainable_key], micro_key), raw

    embeddings, frozen_raw = jax.lax.map(embed, (micro, micro_keys))
    batch_spec = P(sharding.BATCH_AXES)
    embeddings = _constrain(merge_micro_batches(embeddings), parts.mesh, batch_spec)
    frozen_raw = _constrain(merge_micro_batches(frozen_raw), parts.mesh, batch_spec)

    def loss_of(p, trainable):  # 2. full-batch loss; grads wrt embeddings and the heads
        outputs = parts.model.apply({"params": p}, trainable, frozen_raw, method="outputs")
        return _loss_from_outputs(parts, outputs)

    (loss, metrics), (head_grads, embedding_grads) = jax.value_and_grad(
        loss_of, argnums=(0, 1), has_aux=True
    )(params, embeddings)
    embedding_grads = split_micro_batches(embedding_grads, parts.accum_steps)

    def backprop(grads, args):  # 3. recompute one micro-batch, pull its cached grads back
        inputs, micro_key, cotangent = args
        _, vjp = jax.vjp(lambda p: _embed_trainable(parts, p, inputs, micro_key), params)
        return jax.tree.map(jnp.add, grads, vjp(cotangent)[0]), None

    tower_inputs = micro[parts.trainable_key]
    grads, _ = jax.lax.scan(backprop, head_grads, (tower_inputs, micro_keys, embedding_grads))
    return grads, loss, metrics


def train_step(
    parts: StepParts, state: TrainState, frozen_params: Any, batch: dict
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch -> (new state, scalar metrics)."""
    compute = full_batch_grads if parts.accum_steps == 1 else accumulated_grads
    grads, loss, metrics = compute(parts, state.params, frozen_params, batch, step_key(state))
    updates, opt_state = parts.optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
    )
    metrics = {
        **metrics,
        "loss": loss,
        "grad_norm": optax.global_norm(grads),
        "learning_rate": parts.learning_rate(state.step),
    }
    return new_state, metrics


def jit_train_step(parts: StepParts, state_shardings: Any, frozen_shardings: Any, batch_shardings):
    """`train_step` jitted with explicit shardings; the state argument is donated."""
    replicated = NamedSharding(parts.mesh, P()) if parts.mesh is not None else None
    return jax.jit(
        lambda state, frozen_params, batch: train_step(parts, state, frozen_params, batch),
        in_shardings=(state_shardings, frozen_shardings, batch_shardings),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )


def check_batch_layout(batch_size: int, accum_steps: int, mesh: Mesh) -> None:
    """ValueError (naming the config fields) unless micro-batches split evenly on the mesh."""
    if accum_steps < 1:
        raise ValueError(f"config.accum_steps must be >= 1, got {accum_steps}")
    shards = sharding.num_batch_shards(mesh)
    if batch_size % (accum_steps * shards):
        raise ValueError(
            f"config.batch_size={batch_size} must be a multiple of config.accum_steps="
            f"{accum_steps} x {shards} batch shards (mesh data x fsdp) = {accum_steps * shards}"
        )
