"""PNG plots of training curves and zero-shot results (matplotlib, Agg backend)."""

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Files only: no display on training hosts.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_metrics_jsonl(path: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """Series {name: (steps, values)} from a metrics.jsonl of {"step": int, name: value} lines."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"metrics file {path} does not exist")
    series: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not a JSON object ({e})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}:{number}: expected a JSON object with an integer 'step'")
        for name, value in record.items():
            number = _as_number(value)
            if name != "step" and number is not None:
                series[name][0].append(record["step"])
                series[name][1].append(number)
    return dict(series)


def _as_number(value: Any) -> float | None:
    """Numbers as floats; the writer's "nan"/"inf" strings (JSON has neither) as floats too."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return None


def plot_training_curves(
    metrics_path: str | Path, out_path: str | Path, keys: Sequence[str] | None = None
) -> Path:
    """One panel per metric (all of them, or `keys`) against step; returns `out_path`."""
    series = read_metrics_jsonl(metrics_path)
    names = sorted(series) if keys is None else [k for k in keys if k in series]
    if not names:
        raise ValueError(f"{metrics_path}: no numeric metrics to plot (asked for {keys})")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        steps, values = series[name]
        ax.plot(steps, values, marker="." if len(steps) < 50 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    return _save(fig, out_path)


# Above this many classes, per-class labels are unreadable: plots switch to a label-free
# form (sorted accuracies; an unlabeled heatmap) of bounded size.
_MAX_LABELED_CLASSES = 60


def plot_per_class_accuracy(task: dict[str, Any], out_path: str | Path, title: str) -> Path:
    """Bars of each class's accuracy (sorted curve for many classes); classes with no
    examples are left out."""
    names = task["class_names"]
    acc = [task["per_class_accuracy"][n] for n in names]
    seen = [(n, a) for n, a in zip(names, acc, strict=True) if a is not None]
    top1 = task["top1"]
    if len(names) <= _MAX_LABELED_CLASSES:
        fig, ax = plt.subplots(figsize=(6, 0.8 + 0.28 * len(seen)))
        ax.barh(np.arange(len(seen)), [a for _, a in seen], color="tab:blue")
        ax.set_yticks(np.arange(len(seen)), labels=[n for n, _ in seen], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("accuracy")
        ax.axvline(top1, color="tab:red", linestyle="--", label=f"top-1 {top1:.3f}")
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(sorted((a for _, a in seen), reverse=True), color="tab:blue")
        ax.set_ylim(0, 1)
        ax.set_xlabel("class (sorted by accuracy)")
        ax.set_ylabel("accuracy")
        ax.axhline(top1, color="tab:red", linestyle="--", label=f"top-1 {top1:.3f}")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out_path)


def plot_confusion_matrix(task: dict[str, Any], out_path: str | Path, title: str) -> Path:
    """Row-normalized confusion matrix heatmap (row = true class, column = predicted)."""
    names = task["class_names"]
    counts = np.asarray(task["confusion_matrix"], dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    labeled = len(names) <= _MAX_LABELED_CLASSES
    size = 2.5 + 0.35 * len(names) if labeled else 12
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues", interpolation="nearest")
    if labeled:
        ticks = np.arange(len(names))
        ax.set_xticks(ticks, labels=names, rotation=90, fontsize=7)
        ax.set_yticks(ticks, labels=names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, out_path)


def _save(fig, out_path: str | Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
