"""What a frozen-tower cache must match: the tower, its preprocessing, the dataset split.

`describe` turns a run's config into the identity a cache records in its manifest;
`mismatches` lists every field that differs, by dotted name, expected vs found. Only
`frozen.source` (where the checkpoint happened to live) is informational: a moved
checkpoint with the same bytes is the same tower.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import ml_collections
import tensorflow_datasets as tfds

from cwcl_jax import audio
from cwcl_jax.config_utils import to_json_dict
from cwcl_jax.data import sources

FORMAT = 1
DTYPE = "float32"  # frozen_features returns float32 whatever the tower computes in
INFORMATIONAL = frozenset({"frozen.source"})
# Files that define a Hugging Face tokenizer's behaviour (those present are hashed).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
_HASH_BLOCK = 1 << 22


def sha256_files(paths: Iterable[Path]) -> str:
    """sha256 over (file name, size, bytes) of each file in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def weight_files(checkpoint_dir: Path) -> list[Path]:
    """model.safetensors, or the index and its shards (what `load_pretrained` reads)."""
    single = checkpoint_dir / "model.safetensors"
    if single.is_file():
        return [single]
    index = checkpoint_dir / "model.safetensors.index.json"
    if not index.is_file():
        raise ValueError(
            f"config.model.frozen.path={checkpoint_dir}: no model.safetensors or "
            "model.safetensors.index.json to fingerprint for the frozen cache"
        )
    shards = sorted({p.name for p in checkpoint_dir.glob("model-*.safetensors")})
    return [index, *(checkpoint_dir / name for name in shards)]


def frozen_identity(tower: ml_collections.ConfigDict) -> dict[str, Any]:
    """The frozen checkpoint: hashes of its weights and config.json, and the overrides."""
    if not tower.path:
        raise ValueError("config.model.frozen.path: the frozen cache needs the tower's weights")
    checkpoint_dir = Path(tower.path).expanduser().resolve()
    return {
        "modality": tower.modality,
        "source": str(checkpoint_dir),
        "weights_sha256": sha256_files(weight_files(checkpoint_dir)),
        "config_sha256": sha256_files([checkpoint_dir / "config.json"]),
        "overrides": to_json_dict(ml_collections.ConfigDict(dict(tower.overrides))),
    }


def preprocessing(modality: str, data: ml_collections.ConfigDict, tokenizer_dir: Path) -> dict:
    """The settings that turn a record into the frozen tower's input."""
    feature = data.features[modality]
    if modality == "text":
        files = [tokenizer_dir / n for n in _TOKENIZER_FILES if (tokenizer_dir / n).is_file()]
        if not files:
            raise ValueError(f"{tokenizer_dir}: no tokenizer files to fingerprint")
        return {
            "feature": feature,
            "max_text_length": data.max_text_length,
            "tokenizer_sha256": sha256_files(files),
        }
    if modality == "image":
        return {
            "feature": feature,
            "image_size": data.image_size,
            "image_mean": list(data.image_mean),
            "image_std": list(data.image_std),
            "crop": "center square, antialiased bilinear resize",
        }
    frames = round(data.audio_max_seconds * data.sample_rate / audio.LogMelConfig.hop_length)
    log_mel = audio.LogMelConfig(
        sample_rate=data.sample_rate, n_mels=data.n_mels, max_frames=frames
    )
    return {"feature": feature, "log_mel": {k: getattr(log_mel, k) for k in _LOG_MEL_FIELDS}}


_LOG_MEL_FIELDS = ("sample_rate", "n_fft", "hop_length", "n_mels", "max_frames", "f_min", "f_max")


def dataset_identity(config: ml_collections.ConfigDict, split: sources.Split) -> dict[str, Any]:
    builder = tfds.builder(config.data.name, data_dir=config.data.data_dir)
    return {
        "name": builder.info.full_name.rsplit("/", 1)[0],
        "version": str(builder.info.version),
        "split": config.data.train_split,
        "num_examples": len(split),
    }


def describe(config: ml_collections.ConfigDict, split: sources.Split, frozen_dim: int) -> dict:
    """The identity of the cache this run needs (the manifest minus build state).

    split: the opened train split (`sources.open_split`), for its size and features.
    """
    modality = config.model.frozen.modality
    if modality == "text":
        check_single_caption(split, config.data.features.text)
    return {
        "format": FORMAT,
        "frozen": frozen_identity(config.model.frozen),
        "preprocessing": preprocessing(
            modality, config.data, Path(config.model.frozen.path).expanduser()
        ),
        "dataset": dataset_identity(config, split),
        "embedding": {"dim": int(frozen_dim), "dtype": DTYPE},
    }


def check_single_caption(split: sources.Split, path: str) -> None:
    """ValueError when the frozen text feature holds several captions per example (COCO's
    five): training samples one per step, a frozen-side augmentation no cache holds."""
    feature: Any = split.features
    several = False
    for part in path.split("/"):
        if isinstance(feature, tfds.features.Sequence):
            several, feature = True, feature.feature
        feature = feature[part]
    if several or isinstance(feature, tfds.features.Sequence) or feature.shape != ():
        raise ValueError(
            f"config.frozen_cache: {split.name} feature {path!r} holds several captions per "
            "example and training samples one per step (a frozen-side augmentation); a "
            "cache holds one embedding per example. Disable config.frozen_cache or use a "
            "single-caption feature"
        )


def mismatches(expected: Mapping, found: Mapping, prefix: str = "") -> list[str]:
    """'field: expected X, found Y' for every differing leaf (dotted names)."""
    problems = []
    for key in sorted(set(expected) | set(found)):
        name = f"{prefix}{key}"
        if name in INFORMATIONAL:
            continue
        want, got = expected.get(key, "<absent>"), found.get(key, "<absent>")
        if isinstance(want, Mapping) and isinstance(got, Mapping):
            problems += mismatches(want, got, f"{name}.")
        elif want != got:
            problems.append(f"{name}: expected {want!r}, found {got!r}")
    return problems
