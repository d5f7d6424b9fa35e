"""CWCL, InfoNCE and SigLIP losses: pure functions, dense | blockwise | sharded.

Math and choices: docs/losses.md. Shapes: N pairs, D embedding width, D' width of the raw
frozen-tower embeddings the CWCL weights come from. Embeddings passed in are expected to be
L2-normalized (the TwoTower model does it); frozen embeddings for weights are normalized
here, since the weight kernels are functions of cosine similarity.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from cwcl_jax import losses_sharded
from cwcl_jax.losses_blockwise import F32, KERNELS, RowSpec, Targets, rows_loss_sum, target_block

LOSS_NAMES = ("cwcl", "cl", "siglip")
DIRECTIONS = ("trainable_to_frozen", "frozen_to_trainable")
WEIGHT_KWARGS = ("exp_temperature", "shuffle_seed")

__all__ = [
    "DIRECTIONS",
    "KERNELS",
    "LOSS_NAMES",
    "LossConfig",
    "cwcl_loss",
    "make_sharded_two_tower_loss",
    "siglip_loss",
    "similarity_weights",
    "two_tower_loss",
]


# ----------------------------------------------------------------------------- validation
def _check_embeddings(name: str, x: Any, rows: int | None = None, dim: int | None = None):
    shape, dtype = jnp.shape(x), jnp.result_type(x)
    if len(shape) != 2 or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must be a float array [N, D], got {dtype} {shape}")
    if rows is not None and shape[0] != rows:
        raise ValueError(f"{name} has {shape[0]} rows, expected {rows} (one per pair)")
    if dim is not None and shape[1] != dim:
        raise ValueError(f"{name} has width {shape[1]}, expected {dim} (same as anchors)")
    if shape[0] == 0:
        raise ValueError(f"{name} is empty: the batch needs at least one pair")


def _check_positive_scalar(name: str, value: Any) -> jax.Array:
    """value as a float32 scalar; ValueError when not scalar, or concrete and not > 0."""
    if jnp.shape(value) != ():
        raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}")
    if not isinstance(value, jax.core.Tracer) and not float(value) > 0:
        raise ValueError(f"{name} must be > 0, got {float(value)}")
    return jnp.asarray(value, F32)


def _check_scalar(name: str, value: Any) -> jax.Array:
    if jnp.shape(value) != ():
        raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}")
    return jnp.asarray(value, F32)


def _check_block_size(block_size: Any) -> None:
    if block_size is None:
        return
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be None or a positive int, got {block_size!r}")


def _check_kind(kind: Any, field: str = "weight_kind") -> None:
    if kind not in KERNELS:
        raise ValueError(f"{field} must be one of {KERNELS}, got {kind!r}")


def _check_weight_kwargs(weight_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    kwargs = dict(weight_kwargs or {})
    unknown = sorted(set(kwargs) - set(WEIGHT_KWARGS))
    if unknown:
        raise ValueError(f"weight_kwargs has unknown keys {unknown}; allowed: {WEIGHT_KWARGS}")
    if kwargs.get("exp_temperature", 0.1) <= 0:
        raise ValueError(f"exp_temperature must be > 0, got {kwargs['exp_temperature']}")
    return kwargs


# ----------------------------------------------------------------------------- weights
def _unit_rows(frozen: jax.Array) -> jax.Array:
    """Constant, float32, L2-normalized rows [N, D']: the weight kernels take cosines."""
    rows = jax.lax.stop_gradient(frozen).astype(F32)
    return rows / jnp.maximum(jnp.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _frozen_targets(
    kind: str, unit_frozen: jax.Array, row_offset: Any, n_rows: int, shuffle_seed: int
) -> Targets:
    """Targets of rows row_offset .. + n_rows from all normalized frozen embeddings [N, D']."""
    if kind == "identity":
        return Targets()
    cols = unit_frozen
    if kind == "shuffled":
        cols = cols[jax.random.permutation(jax.random.key(shuffle_seed), cols.shape[0])]
    if n_rows == cols.shape[0]:
        return Targets(frozen_rows=cols, frozen_cols=cols)
    rows = jax.lax.dynamic_slice_in_dim(cols, row_offset, n_rows)
    return Targets(frozen_rows=rows, frozen_cols=cols)


def similarity_weights(
    frozen: jax.Array, kind: str = "paper", *, exp_temperature: float = 0.1, shuffle_seed: int = 0
) -> jax.Array:
    """CWCL target weights W [N, N] from frozen embeddings [N, D'] (constants for autodiff).

    paper: w_ij = cos_ij / 2 + 1/2; exp: w_ij = exp((cos_ij - 1) / exp_temperature);
    identity: I; shuffled: the paper kernel on frozen rows permuted by shuffle_seed
    (a negative control). The diagonal is exactly 1 for every kind.
    """
    _check_embeddings("frozen", frozen)
    _check_kind(kind, "kind")
    _check_weight_kwargs({"exp_temperature": exp_temperature})
    n = frozen.shape[0]
    spec = RowSpec("softmax", kind, exp_temperature)
    targets = _frozen_targets(kind, _unit_rows(frozen), 0, n, shuffle_seed)
    return jax.lax.stop_gradient(target_block(spec, targets, jnp.arange(n), n))


# ----------------------------------------------------------------------------- one direction
def cwcl_loss(
    anchors: jax.Array,
    candidates: jax.Array,
    weights: jax.Array | None = None,
    *,
    frozen: jax.Array | None = None,
    weight_kind: str = "paper",
    weight_kwargs: Mapping[str, Any] | None = None,
    temperature: Any,
    block_size: int | None = None,
) -> jax.Array:
    """One direction of CWCL, rows = anchors [N, D], columns = candidates [N, D] -> scalar.

    L = mean_i [logsumexp_j(s_ij) - sum_j W_ij s_ij / sum_j W_ij], s = anchors @ candidates.T
    / temperature. W is `weights` [N, N], or built from `frozen` [N, D'] with `weight_kind`
    and `weight_kwargs` (exp_temperature, shuffle_seed); neither gives W = I (InfoNCE).
    block_size=None is dense; an int computes row blocks of that size (any N) without an
    N x N temporary, with the same value and gradients.
    """
    _check_embeddings("anchors", anchors)
    n, dim = anchors.shape
    _check_embeddings("candidates", candidates, n, dim)
    _check_block_size(block_size)
    tau = _check_positive_scalar("temperature", temperature)
    kwargs = _check_weight_kwargs(weight_kwargs)
    if weights is not None and frozen is not None:
        raise ValueError("pass either weights or frozen (to build weights from), not both")
    if weights is not None:
        if jnp.shape(weights) != (n, n):
            raise ValueError(f"weights must have shape {(n, n)}, got {jnp.shape(weights)}")
        spec, targets = RowSpec("softmax", "explicit"), Targets(weights_rows=weights)
        targets = jax.lax.stop_gradient(targets)
    elif frozen is not None:
        _check_embeddings("frozen", frozen, n)
        _check_kind(weight_kind)
        spec = RowSpec("softmax", weight_kind, kwargs.get("exp_temperature", 0.1))
        seed = kwargs.get("shuffle_seed", 0)
        targets = _frozen_targets(weight_kind, _unit_rows(frozen), 0, n, seed)
    else:
        spec, targets = RowSpec("softmax", "identity"), Targets()
    total, _ = rows_loss_sum(
        spec,
        anchors,
        candidates,
        targets,
        tau=tau,
        bias=jnp.zeros((), F32),
        row_offset=0,
        block_size=block_size,
    )
    return total / n


def siglip_loss(
    anchors: jax.Array,
    candidates: jax.Array,
    *,
    temperature: Any,
    bias: Any,
    block_size: int | None = None,
) -> jax.Array:
    """Sigmoid loss (SigLIP) of anchors [N, D] vs candidates [N, D] -> scalar.

    L = -(1/N) sum_ij log sigmoid(y_ij (<a_i, c_j> / temperature + bias)), y = 2I - 1.
    """
    _check_embeddings("anchors", anchors)
    n, dim = anchors.shape
    _check_embeddings("candidates", candidates, n, dim)
    _check_block_size(block_size)
    tau = _check_positive_scalar("temperature", temperature)
    total, _ = rows_loss_sum(
        RowSpec("sigmoid", "identity"),
        anchors,
        candidates,
        Targets(),
        tau=tau,
        bias=_check_scalar("bias", bias),
        row_offset=0,
        block_size=block_size,
    )
    return total / n


# ----------------------------------------------------------------------------- two towers
@dataclasses.dataclass(frozen=True)
class LossConfig:
    """How the two-tower objective combines its directions (see docs/losses.md).

    name: "cwcl" (weighted directions listed in cwcl_directions, plain InfoNCE for the
    other), "cl" (both directions InfoNCE: CLIP/LiT) or "siglip" (one symmetric sigmoid
    loss; cwcl_directions and direction_weights do not apply). direction_weights scale
    (trainable_to_frozen, frozen_to_trainable). block_size: None (dense) or row block size.
    """

    name: str = "cwcl"
    weight_kind: str = "paper"
    exp_temperature: float = 0.1
    shuffle_seed: int = 0
    cwcl_directions: tuple[str, ...] = ("trainable_to_frozen",)
    direction_weights: tuple[float, float] = (1.0, 1.0)
    block_size: int | None = None

    def __post_init__(self):
        if self.name not in LOSS_NAMES:
            raise ValueError(f"loss name must be one of {LOSS_NAMES}, got {self.name!r}")
        _check_kind(self.weight_kind)
        _check_weight_kwargs({"exp_temperature": self.exp_temperature})
        _check_block_size(self.block_size)
        if isinstance(self.shuffle_seed, bool) or not isinstance(self.shuffle_seed, int):
            raise ValueError(f"shuffle_seed must be an int, got {self.shuffle_seed!r}")
        object.__setattr__(self, "cwcl_directions", _check_directions(self.cwcl_directions))
        if self.name == "cwcl" and not self.cwcl_directions:
            raise ValueError("cwcl_directions is empty: that is plain contrastive, name='cl'")
        object.__setattr__(self, "direction_weights", _check_pair(self.direction_weights))


def _check_directions(directions: Any) -> tuple[str, ...]:
    if isinstance(directions, str) or not isinstance(directions, Sequence):
        raise ValueError(f"cwcl_directions must be a tuple of names, got {directions!r}")
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown or len(set(directions)) != len(directions):
        raise ValueError(f"cwcl_directions must be distinct names of {DIRECTIONS}: {directions}")
    return tuple(directions)


def _check_pair(weights: Any) -> tuple[float, float]:
    if isinstance(weights, str) or not isinstance(weights, Sequence) or len(weights) != 2:
        raise ValueError(f"direction_weights must be 2 floats, got {weights!r}")
    pair = tuple(float(w) for w in weights)
    if not all(math.isfinite(w) and w >= 0 for w in pair) or not any(pair):
        raise ValueError(f"direction_weights must be finite, >= 0, not both 0; got {pair}")
    return pair


def _check_two_tower(trainable, frozen, frozen_raw, temperature, bias, config):
    """Validated (N, tau, bias) of the two-tower inputs; ValueError naming what is wrong."""
    if not isinstance(config, LossConfig):
        raise ValueError(f"config must be a LossConfig, got {type(config).__name__}")
    _check_embeddings("trainable", trainable)
    n, dim = trainable.shape
    _check_embeddings("frozen", frozen, n, dim)
    _check_embeddings("frozen_raw", frozen_raw, n)
    tau = _check_positive_scalar("temperature", temperature)
    if config.name == "siglip" and bias is None:
        raise ValueError("loss 'siglip' needs bias (the learnable logit bias)")
    bias = jnp.zeros((), F32) if bias is None else _check_scalar("bias", bias)
    return n, tau, bias


def _direction_kinds(config: LossConfig) -> tuple[str, str]:
    """Weight kernel of (trainable_to_frozen, frozen_to_trainable); identity = InfoNCE."""
    weighted = config.cwcl_directions if config.name == "cwcl" else ()
    return tuple(config.weight_kind if d in weighted else "identity" for d in DIRECTIONS)


def _two_tower_sums(row_offset, gathered, local, scalars, *, config: LossConfig):
    """Row sums of the two-tower loss and diagnostics for the rows this call owns.

    gathered: (trainable, frozen, unit frozen_raw) for all N pairs; local: the same for the
    n owned rows, which start at global row row_offset; scalars: (tau, bias).
    """
    (p_all, q_all, r_all), (p_rows, q_rows, _), (tau, bias) = gathered, local, scalars

    def direction(anchors, candidates, loss, kind):
        targets = _frozen_targets(kind, r_all, row_offset, p_rows.shape[0], config.shuffle_seed)
        spec = RowSpec(loss, kind, config.exp_temperature)
        return rows_loss_sum(
            spec,
            anchors,
            candidates,
            targets,
            tau=tau,
            bias=bias,
            row_offset=row_offset,
            block_size=config.block_size,
        )

    if config.name == "siglip":
        loss, t2f = direction(p_rows, q_all, "sigmoid", "identity")
        # SigLIP is one symmetric loss: the reverse pass only feeds the f2t accuracy.
        _, f2t = direction(*jax.lax.stop_gradient((q_rows, p_all)), "sigmoid", "identity")
        return loss, _diagnostic_sums(t2f, f2t, t2f)
    kind_t2f, kind_f2t = _direction_kinds(config)
    loss_t2f, t2f = direction(p_rows, q_all, "softmax", kind_t2f)
    loss_f2t, f2t = direction(q_rows, p_all, "softmax", kind_f2t)
    loss = config.direction_weights[0] * loss_t2f + config.direction_weights[1] * loss_f2t
    weighted = f2t if kind_t2f == "identity" else t2f
    return loss, _diagnostic_sums(t2f, f2t, weighted)


def _diagnostic_sums(t2f, f2t, weighted):
    """Row sums of the metrics; target statistics from the weighted direction."""
    return {
        "accuracy_t2f": t2f["correct"],
        "accuracy_f2t": f2t["correct"],
        "target_entropy": weighted["target_entropy"],
        "effective_positives": weighted["effective"],
    }


def _finalize(loss_sum, diagnostic_sums, n, tau):
    metrics = {k: v / n for k, v in diagnostic_sums.items()}
    metrics["temperature"] = jax.lax.stop_gradient(tau)
    return loss_sum / n, metrics


def two_tower_loss(
    trainable: jax.Array,
    frozen: jax.Array,
    frozen_raw: jax.Array,
    *,
    temperature: Any,
    bias: Any = None,
    config: LossConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training objective on one batch -> (loss, metrics).

    trainable [N, D] and frozen [N, D] are the L2-normalized embeddings of the two towers;
    frozen_raw [N, D'] the frozen tower's output before any head (weights come from it).
    metrics: accuracy_t2f, accuracy_f2t (in-batch argmax match), target_entropy and
    effective_positives (mean over rows of the weighted direction's targets), temperature.
    """
    n, tau, bias = _check_two_tower(trainable, frozen, frozen_raw, temperature, bias, config)
    arrays = (trainable, frozen, _unit_rows(frozen_raw))
    loss_sum, sums = _two_tower_sums(0, arrays, arrays, (tau, bias), config=config)
    return _finalize(loss_sum, sums, n, tau)


def make_sharded_two_tower_loss(
    mesh: Mesh, config: LossConfig, batch_axes: Sequence[str] = ("data", "fsdp")
):
    """two_tower_loss for inputs whose batch is split over batch_axes of mesh.

    Each device owns N/d rows, all-gathers the N x D embeddings (and frozen_raw) and
    computes the loss terms of its own rows (blockwise when config.block_size is set);
    the result and the gradients equal two_tower_loss on the whole batch.
    """
    batch_axes = losses_sharded.check_batch_axes(mesh, batch_axes)
    per_shard = lambda *args: _two_tower_sums(*args, config=config)
    sharded = losses_sharded.shard_rows(per_shard, mesh, batch_axes, n_sharded=3, n_replicated=2)

    def loss_fn(trainable, frozen, frozen_raw, *, temperature, bias=None):
        n, tau, bias = _check_two_tower(trainable, frozen, frozen_raw, temperature, bias, config)
        losses_sharded.check_divisible(n, mesh, batch_axes)
        # Normalized before the gather, so no device holds a second [N, D'] copy.
        loss_sum, sums = sharded(trainable, frozen, _unit_rows(frozen_raw), tau, bias)
        return _finalize(loss_sum, sums, n, tau)

    return loss_fn
