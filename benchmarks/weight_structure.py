"""What CWCL's targets carry on the embedded datasets: the frozen MiniLM kernel, measured.

For each demo config, embeds training texts with the config's frozen text tower, cuts them
into batches of the config's batch size, and builds the CWCL target weights exactly as the
loss does (`cwcl_jax.losses.similarity_weights`). Prints, per kernel:

- the off-diagonal cosine and weight, the target mass left on the true pair, the target
  entropy / ln B and the effective positives (the trainer logs the last two);
- per class label (shape, color, intent): the share of off-diagonal pairs that share the
  label (the base rate) and the share of off-diagonal target mass they get (lift = mass
  share / base rate; 1.0 means the targets ignore the label).

The `exp` kernel (exp((cos - 1) / 0.1)) is printed beside `paper` as a reference point for
a sharper kernel over the same embeddings; the comparison runs use `paper`.

    .venv/bin/python benchmarks/weight_structure.py [--num 2048]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from compare_losses import DATASETS, REPO  # benchmarks/compare_losses.py

import cwcl_jax.data  # noqa: F401  (registers the builders)
from cwcl_jax.config_utils import load_sibling
from cwcl_jax.losses import similarity_weights
from cwcl_jax.models import load_pretrained, make_text_encoder

KERNELS = ("paper", "exp")


def load_texts_and_labels(config, num: int) -> tuple[list[str], dict[str, np.ndarray]]:
    """The first `num` training texts and their zero-shot label columns [num]."""
    labels = [t.label_key for t in config.eval.tasks.values() if t.kind == "zeroshot"]
    builder = tfds.builder(config.data.name, data_dir=config.data.data_dir)
    media = [f for f in (config.data.features.image, config.data.features.speech) if f]
    split = builder.as_dataset(
        split=f"train[:{num}]", decoders={f: tfds.decode.SkipDecoding() for f in media}
    )
    rows = list(tfds.as_numpy(split))
    texts = [row[config.data.features.text].decode() for row in rows]
    return texts, {name: np.array([row[name] for row in rows]) for name in labels}


def batch_statistics(frozen: np.ndarray, labels: dict[str, np.ndarray], kernel: str) -> dict:
    """Statistics of one batch's targets: frozen [B, D], labels {name: [B]}."""
    b = frozen.shape[0]
    weights = np.asarray(similarity_weights(frozen, kernel), np.float64)
    unit = frozen / np.linalg.norm(frozen, axis=1, keepdims=True)
    off = ~np.eye(b, dtype=bool)
    targets = weights / weights.sum(axis=1, keepdims=True)
    entropy = -np.sum(targets * np.log(np.maximum(targets, 1e-300)), axis=1)
    stats = {
        "cos": float(np.mean((unit @ unit.T)[off])),
        "weight": float(np.mean(weights[off])),
        "true_pair_mass": float(np.mean(np.diag(targets))),
        "entropy_over_ln_b": float(np.mean(entropy) / np.log(b)),
        "effective_positives": float(np.mean(1.0 / np.sum(targets**2, axis=1))),
    }
    off_mass = np.where(off, targets, 0.0)
    off_mass /= off_mass.sum(axis=1, keepdims=True)
    for name, label in labels.items():
        same = (label[:, None] == label[None, :]) & off
        base_rate = same.sum() / off.sum()
        mass_share = float(np.mean(np.sum(off_mass * same, axis=1)))
        stats[f"{name} lift"] = mass_share / base_rate
    return stats


def report(name: str, config_path: str, num: int) -> None:
    config = load_sibling(str(REPO / config_path), Path(config_path).stem).get_config()
    texts, labels = load_texts_and_labels(config, num)
    encode = make_text_encoder(load_pretrained(config.model.frozen.path))
    frozen = encode(texts)
    b = config.batch_size
    batches = [slice(i, i + b) for i in range(0, len(texts) - b + 1, b)]
    print(f"\n{name}: {config.data.name}, {len(batches)} batches of {b}, e.g. {texts[:2]}")
    for kernel in KERNELS:
        per_batch = [
            batch_statistics(frozen[s], {k: v[s] for k, v in labels.items()}, kernel)
            for s in batches
        ]
        means = {k: np.mean([stats[k] for stats in per_batch]) for k in per_batch[0]}
        cells = "  ".join(f"{k} {v:.3f}" for k, v in means.items())
        print(f"  {kernel:6} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=2048, help="training texts per dataset")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated")
    args = parser.parse_args()
    for name in args.datasets.split(","):
        if name not in DATASETS:
            parser.error(f"--datasets: {name!r}: choose from {sorted(DATASETS)}")
        report(name, DATASETS[name], args.num)


if __name__ == "__main__":
    main()
