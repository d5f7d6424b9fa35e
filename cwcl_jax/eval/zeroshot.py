"""Zero-shot classification: class names x prompt templates -> class embeddings -> argmax.

The text side is a caller-supplied `embed_texts(list[str]) -> [n, D]` (normally the frozen
text tower), so this module does not care which tower is frozen.
"""

from collections.abc import Callable, Sequence

import numpy as np

from cwcl_jax.eval import metrics

EmbedTexts = Callable[[list[str]], np.ndarray]


def prompt_texts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every class name in every template, class-major: [C * T] strings."""
    return [template.format(name) for name in class_names for template in templates]


def embed_prompts(
    class_names: Sequence[str],
    templates: Sequence[str],
    embed_texts: EmbedTexts,
    *,
    batch_size: int = 256,
) -> np.ndarray:
    """L2-normalized prompt embeddings [C, T, D], embedding `batch_size` texts per call."""
    texts = prompt_texts(class_names, templates)
    chunks = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        embedded = np.asarray(embed_texts(chunk))
        if embedded.ndim != 2 or embedded.shape[0] != len(chunk):
            raise ValueError(
                f"embed_texts returned shape {embedded.shape} for {len(chunk)} texts; "
                "expected [n_texts, dim]"
            )
        chunks.append(embedded)
    flat = metrics.l2_normalize(np.concatenate(chunks), name="prompt embeddings")
    return flat.reshape(len(class_names), len(templates), -1)


def class_embeddings(prompt_embeddings: np.ndarray) -> np.ndarray:
    """CLIP's prompt ensemble: mean of normalized template embeddings, renormalized.

    prompt_embeddings: [C, T, D] -> [C, D].
    """
    return metrics.l2_normalize(prompt_embeddings.mean(axis=1), name="class embeddings")


def check_labels(labels: np.ndarray, num_examples: int, num_classes: int, task: str) -> np.ndarray:
    """Labels as int64 [N], or a ValueError naming the task and the offending value."""
    labels = np.asarray(labels)
    if labels.shape != (num_examples,):
        raise ValueError(
            f"task {task!r}: labels have shape {labels.shape}, expected ({num_examples},)"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"task {task!r}: labels must be integers, got dtype {labels.dtype}")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(
            f"task {task!r}: label {int(labels[bad][0])} is outside [0, {num_classes}) "
            f"for {num_classes} class names"
        )
    return labels.astype(np.int64)


def predict(queries: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Argmax class of each query (first index on ties). [N, D] x [C, D] -> [N] int64."""
    predictions = [
        np.argmax(queries[start : start + 4096] @ classes.T, axis=1)
        for start in range(0, queries.shape[0], 4096)
    ]
    return np.concatenate(predictions).astype(np.int64)


def template_spread(
    queries: np.ndarray, labels: np.ndarray, prompt_embeddings: np.ndarray, templates: Sequence[str]
) -> dict:
    """Top-1 accuracy of the classifier built from each template alone, and its spread.

    The paper's robustness-to-templates result: a tower that learned the frozen space's
    structure should classify well with any reasonable prompt, not one lucky template.
    """
    num_classes = prompt_embeddings.shape[0]
    class_ids = np.arange(num_classes)
    accuracies = []
    for t in range(len(templates)):
        ranks = metrics.similarity_ranks(queries, prompt_embeddings[:, t], labels, class_ids)
        accuracies.append(float(np.mean(ranks == 0)))
    acc = np.asarray(accuracies)
    return {
        "per_template_accuracy": dict(zip(templates, accuracies, strict=True)),
        "template_spread": {
            "mean": float(acc.mean()),
            "std": float(acc.std()),
            "min": float(acc.min()),
            "max": float(acc.max()),
            "best_template": templates[int(acc.argmax())],
            "worst_template": templates[int(acc.argmin())],
        },
    }


def zeroshot_metrics(
    queries: np.ndarray,
    labels: np.ndarray,
    prompt_embeddings: np.ndarray,
    *,
    class_names: Sequence[str],
    templates: Sequence[str],
    ks: Sequence[int] = (1, 5),
    per_template: bool = True,
    task: str = "zeroshot",
) -> dict:
    """All zero-shot classification metrics for one label set.

    queries: [N, D] embeddings from the non-text tower; labels: [N] int in [0, C);
    prompt_embeddings: [C, T, D] from `embed_prompts`. top-k uses k clipped to C.
    Returns a JSON-able dict (per-class accuracy None for classes with no examples).
    """
    num_classes, num_templates, _ = prompt_embeddings.shape
    if num_classes != len(class_names) or num_templates != len(templates):
        raise ValueError(
            f"task {task!r}: prompt embeddings {prompt_embeddings.shape[:2]} do not match "
            f"{len(class_names)} class names x {len(templates)} templates"
        )
    queries = metrics.l2_normalize(queries, name=f"task {task!r} query embeddings")
    if queries.shape[1] != prompt_embeddings.shape[2]:
        raise ValueError(
            f"task {task!r}: query embeddings have dim {queries.shape[1]} but prompt "
            f"embeddings have dim {prompt_embeddings.shape[2]}"
        )
    if queries.shape[0] == 0:
        raise ValueError(f"task {task!r}: no examples to classify (all rows were padding?)")
    labels = check_labels(labels, queries.shape[0], num_classes, task)
    classes = class_embeddings(prompt_embeddings)
    ranks = metrics.similarity_ranks(queries, classes, labels, np.arange(num_classes))
    topk = metrics.recall_at_k(ranks, ks, num_classes)
    confusion = metrics.confusion_matrix(labels, predict(queries, classes), num_classes)
    per_class = metrics.per_class_accuracy(confusion)
    results = {
        "num_examples": int(queries.shape[0]),
        "num_classes": num_classes,
        "num_templates": num_templates,
        **{f"top{k}": acc for k, acc in topk.items()},
        "mean_per_class_accuracy": float(np.nanmean(per_class)),
        "class_names": list(class_names),
        "per_class_accuracy": {
            name: (None if np.isnan(acc) else float(acc))
            for name, acc in zip(class_names, per_class, strict=True)
        },
        "confusion_matrix": confusion.tolist(),
    }
    if per_template:
        results.update(template_spread(queries, labels, prompt_embeddings, templates))
    return results
