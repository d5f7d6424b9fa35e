"""Row engine of the contrastive losses: every loss here is a sum of per-row terms.

One direction of CWCL/InfoNCE/SigLIP is a sum over anchor rows i of a function of row i of
the similarity matrix x = anchors @ candidates.T and of row i of the targets. The engine
computes that sum for a set of rows (all of them on one device, or the rows a device owns
under shard_map) against all columns:

- dense: the whole [n, N] block at once, differentiated by plain autodiff;
- blockwise: a `lax.scan` over row blocks of size B, each row block against all N columns,
  so temporaries are O(B * N), never N x N. Because each block holds whole rows, the
  log-sum-exp of a row is exact inside its block, and the block's exact gradient with
  respect to x is available in the forward pass. The custom VJP therefore accumulates the
  input gradients during the forward scan (4 matrix products per block, the same count as
  dense autodiff) and its backward pass only scales them by the incoming cotangent; a
  recomputing backward would cost 6. Plain forward calls (no gradient) skip the gradient
  products. Rows are padded to a multiple of B and padded rows are masked out, so any row
  count works.

Targets (weights) are built per row block from the frozen embeddings, never stored N x N.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

F32 = jnp.float32
KERNELS = ("paper", "exp", "identity", "shuffled")


@dataclasses.dataclass(frozen=True)
class RowSpec:
    """Static description of one direction.

    loss: "softmax" (CWCL; InfoNCE when the targets are the identity) or "sigmoid" (SigLIP,
    identity targets only). kernel: one of KERNELS, or "explicit" for a given weights array.
    """

    loss: str
    kernel: str
    exp_temperature: float = 0.1


def matmul_nt(x: jax.Array, y: jax.Array) -> jax.Array:
    """x [n, d] @ y[m, d].T -> [n, m] float32 (bf16 operands accumulate in float32)."""
    return jnp.einsum("nd,md->nm", x, y, preferred_element_type=F32)


class Targets(NamedTuple):
    """Arrays the target weights are built from (constants for autodiff).

    frozen_rows [n, D'] (the anchor rows' frozen embeddings) and frozen_cols [N, D'] (all
    columns'), L2-normalized and already permuted for "shuffled"; weights_rows [n, N] for
    kernel "explicit". Fields a kernel does not use are None.
    """

    frozen_rows: jax.Array | None = None
    frozen_cols: jax.Array | None = None
    weights_rows: jax.Array | None = None


def target_block(spec: RowSpec, targets: Targets, row_ids: jax.Array, n_cols: int) -> jax.Array:
    """Target weights of some rows against all n_cols columns -> [B, N] float32.

    targets holds these rows' slices ([B, D'], [B, N]); row_ids [B] are global row
    indices, so the positive pair is where row_ids equals the column index.
    """
    diag = row_ids[:, None] == jnp.arange(n_cols)[None, :]
    if spec.kernel == "identity":
        return diag.astype(F32)
    if spec.kernel == "explicit":
        return targets.weights_rows.astype(F32)
    cos = jnp.clip(matmul_nt(targets.frozen_rows, targets.frozen_cols), -1.0, 1.0)
    if spec.kernel == "exp":
        weights = jnp.exp((cos - 1.0) / spec.exp_temperature)
    else:  # paper, shuffled
        weights = 0.5 * cos + 0.5
    # cos_ii is 1 only up to rounding; the positive pair gets exactly weight 1.
    return jnp.where(diag, 1.0, weights)


def _safe_row_sum(weights: jax.Array) -> jax.Array:
    """Row sums [B] with 1 where a row is empty (padded rows), so nothing divides by 0."""
    total = jnp.sum(weights, axis=1)
    return jnp.where(total > 0, total, 1.0)


def row_losses(
    spec: RowSpec, x: jax.Array, tau: jax.Array, bias: jax.Array, weights: jax.Array
) -> jax.Array:
    """Per-row loss [B] from raw similarities x [B, N] and targets [B, N] (float32).

    softmax: L_i = logsumexp_j(z_ij) - sum_j W_ij z_ij / sum_j W_ij with z = x / tau.
    sigmoid: L_i = -sum_j log sigmoid(y_ij z_ij), z = x / tau + bias, y = +1 on the
    diagonal and -1 elsewhere (weights is the identity there).
    """
    if spec.loss == "softmax":
        z = x / tau
        weighted = jnp.sum(weights * z, axis=1) / _safe_row_sum(weights)
        return jax.nn.logsumexp(z, axis=1) - weighted
    z = x / tau + bias
    return -jnp.sum(jax.nn.log_sigmoid((2.0 * weights - 1.0) * z), axis=1)


def row_diagnostics(
    spec: RowSpec, x: jax.Array, weights: jax.Array, row_ids: jax.Array, valid: jax.Array
) -> dict[str, jax.Array]:
    """Sums over valid rows of: argmax hit, target entropy, effective positives (no grad)."""
    x, weights = jax.lax.stop_gradient((x, weights))
    hit = jnp.argmax(x, axis=1) == row_ids
    if spec.kernel == "identity":
        entropy = jnp.zeros(x.shape[0], F32)
        effective = jnp.ones(x.shape[0], F32)
    else:
        normalized = weights / _safe_row_sum(weights)[:, None]
        entropy = -jnp.sum(jax.scipy.special.xlogy(normalized, normalized), axis=1)
        effective = 1.0 / jnp.sum(normalized * normalized, axis=1)
    per_row = {"correct": hit.astype(F32), "target_entropy": entropy, "effective": effective}
    return {k: jnp.sum(jnp.where(valid, v, 0.0)) for k, v in per_row.items()}


def _block_terms(spec, x, tau, bias, weights, row_ids, valid):
    """(sum of valid row losses, diagnostics) of one row block."""
    losses = jnp.where(valid, row_losses(spec, x, tau, bias, weights), 0.0)
    return jnp.sum(losses), row_diagnostics(spec, x, weights, row_ids, valid)


def rows_loss_sum(
    spec: RowSpec,
    anchors: jax.Array,
    candidates: jax.Array,
    targets: Targets,
    *,
    tau: jax.Array,
    bias: jax.Array,
    row_offset: jax.Array | int,
    block_size: int | None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sum over anchor rows of the row losses, plus diagnostics summed over rows.

    anchors [n, D] are rows row_offset .. row_offset + n - 1 of the global batch;
    candidates [N, D] are all columns. tau and bias are float32 scalars. Validated inputs
    only (the public functions in cwcl_jax.losses check them). Under shard_map every input
    must be per-device (varying), as cwcl_jax.losses_sharded arranges.
    """
    row_offset = jnp.asarray(row_offset, jnp.int32)
    if block_size is None:
        row_ids = row_offset + jnp.arange(anchors.shape[0])
        weights = target_block(spec, targets, row_ids, candidates.shape[0])
        x = matmul_nt(anchors, candidates)
        return _block_terms(spec, x, tau, bias, weights, row_ids, jnp.ones(row_ids.shape, bool))
    block = min(block_size, anchors.shape[0])
    return _blockwise(spec, block, anchors, candidates, tau, bias, targets, row_offset)


def _to_blocks(array: jax.Array | None, block: int) -> jax.Array | None:
    """[n, ...] -> [ceil(n / block), block, ...], zero-padded at the end."""
    if array is None:
        return None
    n_blocks = -(-array.shape[0] // block)
    padding = [(0, n_blocks * block - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
    return jnp.pad(array, padding).reshape(n_blocks, block, *array.shape[1:])


def _scan_blocks(spec, block, anchors, candidates, tau, bias, targets, row_offset, wanted):
    """Scan over row blocks -> (loss sum, diagnostics), plus gradients unless wanted is None.

    wanted = (anchors?, candidates?): which input gradients to compute. The gradients are
    (d/d anchors or None, d/d candidates or None, d/d tau, d/d bias) of the loss sum.
    """
    n_rows, n_cols = anchors.shape[0], candidates.shape[0]
    anchor_blocks = _to_blocks(anchors, block)
    local_ids = jnp.arange(anchor_blocks.shape[0] * block).reshape(-1, block)
    row_targets = Targets(
        _to_blocks(targets.frozen_rows, block), None, _to_blocks(targets.weights_rows, block)
    )
    zero = jnp.zeros_like(tau)  # under shard_map, as per-device (varying) as the inputs
    init = (zero, dict.fromkeys(("correct", "target_entropy", "effective"), zero))
    if wanted is not None:
        grad_cand = jnp.zeros_like(candidates, F32) if wanted[1] else None
        init = (init, (grad_cand, zero, zero))

    def step(carry, xs):
        anchor_blk, targets_blk, ids = xs
        row_ids = row_offset + ids
        targets_blk = targets_blk._replace(frozen_cols=targets.frozen_cols)
        weights = target_block(spec, targets_blk, row_ids, n_cols)
        x = matmul_nt(anchor_blk, candidates)
        valid = ids < n_rows

        def terms(x, tau, bias):
            return _block_terms(spec, x, tau, bias, weights, row_ids, valid)

        if wanted is None:
            return _tree_add(carry, terms(x, tau, bias)), None
        loss, vjp, diagnostics = jax.vjp(terms, x, tau, bias, has_aux=True)
        grad_x, grad_tau, grad_bias = vjp(jnp.ones_like(loss))
        grad_x = grad_x.astype(candidates.dtype)
        grad_anchor = grad_cand = None
        if wanted[0]:
            grad_anchor = jnp.einsum("bn,nd->bd", grad_x, candidates, preferred_element_type=F32)
        if wanted[1]:
            grad_cand = jnp.einsum("bn,bd->nd", grad_x, anchor_blk, preferred_element_type=F32)
        update = ((loss, diagnostics), (grad_cand, grad_tau, grad_bias))
        return _tree_add(carry, update), grad_anchor

    carry, grad_anchor_blocks = jax.lax.scan(step, init, (anchor_blocks, row_targets, local_ids))
    if wanted is None:
        return carry
    (loss_and_diagnostics, (grad_cand, grad_tau, grad_bias)) = carry
    grad_anchor = None
    if wanted[0]:
        grad_anchor = grad_anchor_blocks.reshape(-1, anchors.shape[1])[:n_rows]
    return loss_and_diagnostics, (grad_anchor, grad_cand, grad_tau, grad_bias)


def _tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _blockwise(spec, block, anchors, candidates, tau, bias, targets, row_offset):
    return _scan_blocks(spec, block, anchors, candidates, tau, bias, targets, row_offset, None)


def _blockwise_fwd(spec, block, anchors, candidates, tau, bias, targets, row_offset):
    # With symbolic_zeros, primals arrive as CustomVJPPrimal(value, perturbed): gradients
    # nobody asked for (e.g. of frozen-tower candidates) cost no matrix product.
    wanted = (anchors.perturbed, candidates.perturbed)
    primals = (anchors, candidates, tau, bias)
    anchors, candidates, tau, bias = (p.value for p in primals)
    targets, row_offset = jax.tree.map(lambda p: p.value, (targets, row_offset))
    out, grads = _scan_blocks(
        spec, block, anchors, candidates, tau, bias, targets, row_offset, wanted
    )
    grads = tuple(
        g.astype(p.value.dtype) if p.perturbed else None
        for g, p in zip(grads, primals, strict=True)
    )
    return out, grads


def _blockwise_bwd(spec, block, grads, cotangents):
    # Targets are constants and the diagnostics are declared non-differentiable: only the
    # loss cotangent matters, and the gradients were computed in the forward scan.
    scale = cotangents[0]
    if isinstance(scale, jax.custom_derivatives.SymbolicZero):
        return (None,) * 6
    return (*(None if g is None else (scale * g).astype(g.dtype) for g in grads), None, None)


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd, symbolic_zeros=True)
