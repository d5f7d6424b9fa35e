"""Ranking and classification metrics on host numpy arrays (pure functions).

Ties are broken towards the lower index everywhere (a stable descending sort), so top-1
always agrees with `np.argmax` and every process computes the same numbers.
"""

from collections.abc import Iterable

import numpy as np

# Rows of the similarity matrix materialized at a time: bounds host memory at
# _CHUNK_ROWS x gallery floats whatever the number of queries.
_CHUNK_ROWS = 2048


def l2_normalize(x: np.ndarray, *, name: str = "embeddings") -> np.ndarray:
    """Rows scaled to unit L2 norm. `x`: [n, d] -> [n, d] float32."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [n, dim], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contain NaN or inf values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def first_relevant_rank(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """0-based rank of the best relevant item in each row.

    scores: [n, m] float; relevant: [n, m] bool with at least one True per row.
    Returns [n] int64: how many items a stable descending sort puts before the first
    relevant one (so rank < k means "a relevant item is in the top k").
    """
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} differ in shape")
    has_relevant = relevant.any(axis=1)
    if not has_relevant.all():
        row = int(np.argmin(has_relevant))
        raise ValueError(f"row {row} has no relevant item; ranks are undefined")
    masked = np.where(relevant, scores, -np.inf)
    best_index = np.argmax(masked, axis=1)
    best = np.take_along_axis(scores, best_index[:, None], axis=1)
    columns = np.arange(scores.shape[1])[None, :]
    ahead = (scores > best) | ((scores == best) & (columns < best_index[:, None]))
    return ahead.sum(axis=1)


def similarity_ranks(
    queries: np.ndarray, gallery: np.ndarray, query_ids: np.ndarray, gallery_ids: np.ndarray
) -> np.ndarray:
    """Rank of the first relevant gallery item for every query, chunked over queries.

    queries: [n, d], gallery: [m, d] (dot product = similarity); query_ids: [n],
    gallery_ids: [m]; gallery item j is relevant to query i when the ids are equal.
    Returns [n] int64.
    """
    ranks = []
    for start in range(0, queries.shape[0], _CHUNK_ROWS):
        rows = slice(start, start + _CHUNK_ROWS)
        scores = queries[rows] @ gallery.T
        relevant = query_ids[rows, None] == gallery_ids[None, :]
        ranks.append(first_relevant_rank(scores, relevant))
    return np.concatenate(ranks) if ranks else np.zeros((0,), np.int64)


def recall_at_k(ranks: np.ndarray, ks: Iterable[int], num_candidates: int) -> dict[int, float]:
    """Fraction of rows with rank < k, for each k (k clipped to `num_candidates`).

    ranks: [n] int. Returns {k: fraction} keyed by the requested (unclipped) k.
    """
    if ranks.size == 0:
        raise ValueError("no examples to score (all rows were padding?)")
    out = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        out[int(k)] = float(np.mean(ranks < min(k, num_candidates)))
    return out


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [num_classes, num_classes] int64: row = true class, column = predicted."""
    flat = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
    counts = np.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class from a confusion matrix [C, C] -> [C] (NaN: class never seen)."""
    support = confusion.sum(axis=1)
    correct = np.diag(confusion).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, correct / support, np.nan)
