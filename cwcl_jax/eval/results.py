"""The eval results structure: JSON file, flat scalars for metric writers, a text table."""

import json
import os
import tempfile
from pathlib import Path
from typing import Any

# Per-class and per-template breakdowns go to the JSON file and the plots; only their
# summaries go to TensorBoard, where hundreds of scalars per eval would bury the rest.
_BREAKDOWNS = ("class_names", "per_class_accuracy", "per_template_accuracy", "confusion_matrix")


def write_json(path: str | Path, results: dict[str, Any]) -> Path:
    """Writes `results` as JSON atomically (temp file + rename): a reader never sees half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def scalars(results: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Flat {"eval/<task>/<metric>": value} of every numeric summary (no breakdowns)."""
    flat = {}

    def visit(node, key):
        if isinstance(node, dict):
            for name, child in node.items():
                if name not in _BREAKDOWNS:
                    visit(child, f"{key}/{name}")
        elif isinstance(node, int | float) and not isinstance(node, bool):
            flat[key] = float(node)

    visit(results.get("tasks", {}), prefix)
    return flat


def summary_table(results: dict[str, Any]) -> str:
    """A short human table: task, metric, value (headline metrics only)."""
    rows = [("task", "metric", "value")]
    for name, task in results.get("tasks", {}).items():
        if task["kind"] == "zeroshot":
            rows.append((name, "top1", f"{task['top1']:.4f}"))
            rows.append((name, "mean per-class acc", f"{task['mean_per_class_accuracy']:.4f}"))
            if "template_spread" in task:
                low, high = task["template_spread"]["min"], task["template_spread"]["max"]
                rows.append((name, "template acc min/max", f"{low:.4f}/{high:.4f}"))
        else:
            for direction, recalls in task.items():
                if isinstance(recalls, dict) and "R@1" in recalls:
                    rows.append((name, f"{direction} R@1", f"{recalls['R@1']:.4f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)
