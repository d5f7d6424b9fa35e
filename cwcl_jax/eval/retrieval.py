"""Cross-modal retrieval both ways (query -> gallery and gallery -> query), Recall@k."""

from collections.abc import Sequence

import numpy as np

from cwcl_jax.eval import metrics


def dedupe_gallery(embeddings: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keeps the first row of each item id: ([m, D], [m]) from rows ([n, D], [n]).

    For datasets stored as (item, caption) rows with several captions per item, the item
    side repeats; the gallery must hold each item once or recall would count duplicates.
    """
    _, first_rows = np.unique(item_ids, return_index=True)
    order = np.sort(first_rows)
    return embeddings[order], item_ids[order]


def retrieval_metrics(
    queries: np.ndarray,
    gallery: np.ndarray,
    *,
    query_ids: np.ndarray | None = None,
    gallery_ids: np.ndarray | None = None,
    ks: Sequence[int] = (1, 5, 10),
    query_name: str = "query",
    gallery_name: str = "gallery",
) -> dict:
    """Recall@k in both directions, on cosine similarity.

    queries: [n, D]; gallery: [m, D]. A gallery item is relevant to a query when their ids
    match; by default ids are row indices (one-to-one pairs, n == m). Several captions per
    item: query_ids = the item index of each caption, gallery_ids = arange(m) (the
    gallery -> query direction then counts a hit when any of the item's captions is in
    the top k). k is clipped to the number of candidates.
    Returns {"<q>_to_<g>": {"R@k": ...}, "<g>_to_<q>": {...}, "num_queries", "num_gallery"}.
    """
    queries = metrics.l2_normalize(queries, name=f"{query_name} embeddings")
    gallery = metrics.l2_normalize(gallery, name=f"{gallery_name} embeddings")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"{query_name} embeddings have dim {queries.shape[1]} but {gallery_name} "
            f"embeddings have dim {gallery.shape[1]}"
        )
    query_ids, gallery_ids = _resolve_ids(queries, gallery, query_ids, gallery_ids)
    forward = metrics.similarity_ranks(queries, gallery, query_ids, gallery_ids)
    backward = metrics.similarity_ranks(gallery, queries, gallery_ids, query_ids)
    return {
        f"{query_name}_to_{gallery_name}": _recalls(forward, ks, gallery.shape[0]),
        f"{gallery_name}_to_{query_name}": _recalls(backward, ks, queries.shape[0]),
        "num_queries": int(queries.shape[0]),
        "num_gallery": int(gallery.shape[0]),
    }


def _recalls(ranks: np.ndarray, ks: Sequence[int], num_candidates: int) -> dict[str, float]:
    return {f"R@{k}": v for k, v in metrics.recall_at_k(ranks, ks, num_candidates).items()}


def _resolve_ids(queries, gallery, query_ids, gallery_ids) -> tuple[np.ndarray, np.ndarray]:
    if (query_ids is None) != (gallery_ids is None):
        raise ValueError("pass both query_ids and gallery_ids, or neither")
    if query_ids is None:
        if queries.shape[0] != gallery.shape[0]:
            raise ValueError(
                f"{queries.shape[0]} queries and {gallery.shape[0]} gallery items: without "
                "ids, retrieval needs one-to-one pairs"
            )
        ids = np.arange(queries.shape[0])
        return ids, ids
    query_ids, gallery_ids = np.asarray(query_ids), np.asarray(gallery_ids)
    if query_ids.shape != (queries.shape[0],) or gallery_ids.shape != (gallery.shape[0],):
        raise ValueError(
            f"ids shapes {query_ids.shape}, {gallery_ids.shape} do not match "
            f"{queries.shape[0]} queries, {gallery.shape[0]} gallery items"
        )
    return query_ids, gallery_ids
