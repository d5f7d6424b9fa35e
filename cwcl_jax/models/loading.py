"""Hugging Face checkpoints (safetensors only) -> this project's Flax towers.

A `Converter` per Hugging Face `model_type` says how to build the Flax module from
config.json, how Flax parameter paths map to checkpoint tensor names (`Rule`s), and how
to load the tokenizer or feature settings. Tower modules register theirs with
`register_converter` (text.py: bert, roberta; vision.py: vit, clip_vision_model; the speech
tower: whisper). `load_pretrained` then works for every registered type alike: it checks
the whole checkpoint against the module and reports every missing key, unexpected key and
shape mismatch by name in one error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from safetensors.numpy import load_file

Transform = Callable[[np.ndarray], np.ndarray]


def identity(x: np.ndarray) -> np.ndarray:
    return x


def linear(x: np.ndarray) -> np.ndarray:
    """PyTorch Linear weight [out, in] -> Flax kernel [in, out]."""
    return x.T


def conv2d(x: np.ndarray) -> np.ndarray:
    """PyTorch Conv2d weight [out, in, h, w] -> Flax kernel [h, w, in, out]."""
    return x.transpose(2, 3, 1, 0)


def conv1d(x: np.ndarray) -> np.ndarray:
    """PyTorch Conv1d weight [out, in, k] -> Flax kernel [k, in, out]."""
    return x.transpose(2, 1, 0)


@dataclasses.dataclass(frozen=True)
class Rule:
    """Flax param path (regex over "a/b/kernel") -> checkpoint name (`re.Match.expand`).

    After `transform`, a tensor of another rank but the same size as the Flax param is
    reshaped to it, so fused head layouts ([embed, heads * kv] -> [embed, heads, kv]) need
    no extra rule.
    """

    pattern: str
    target: str
    transform: Transform = identity


def module_rules(flax_module: str, hf_module: str, kernel: Transform = linear) -> list[Rule]:
    """Rules for a Dense/Conv/LayerNorm/Embed module: kernel, bias, scale, embedding."""
    return [
        Rule(f"{flax_module}/kernel", f"{hf_module}.weight", kernel),
        Rule(f"{flax_module}/bias", f"{hf_module}.bias"),
        Rule(f"{flax_module}/scale", f"{hf_module}.weight"),
        Rule(f"{flax_module}/embedding", f"{hf_module}.weight"),
    ]


def encoder_rules(flax_encoder: str, hf_layer: str, components: Mapping[str, str]) -> list[Rule]:
    """Rules for a `layers.Encoder` at `flax_encoder`.

    hf_layer: checkpoint prefix of layer i with "{i}" in place of the index, e.g.
      "encoder.layer.{i}". components: Flax submodule of `EncoderLayer` -> checkpoint name
      under the layer, e.g. {"attention/query": "attention.self.query", "mlp/fc1": ...}.
    """
    hf_prefix = hf_layer.replace("{i}", r"\1")
    rules = []
    for flax_name, hf_name in components.items():
        rules += module_rules(rf"{flax_encoder}/layer_(\d+)/{flax_name}", f"{hf_prefix}.{hf_name}")
    return rules


@dataclasses.dataclass(frozen=True)
class Converter:
    """How one Hugging Face `model_type` becomes a tower.

    build_module(checkpoint_dir, config, **overrides) -> nn.Module; overrides are tower
      config fields (dtype, remat, pooling, ...).
    example_inputs(module) -> a small inputs dict, used to trace `module.init` shapes.
    rules: Flax param path -> checkpoint name; the first matching rule wins.
    ignore: regexes of checkpoint names that are known and deliberately unused.
    prefixes: name prefixes a checkpoint may carry (e.g. "bert." for BertForMaskedLM).
    load_processor(checkpoint_dir, config) -> tokenizer / feature settings.
    """

    modality: str
    build_module: Callable[..., nn.Module]
    example_inputs: Callable[[nn.Module], dict]
    rules: Sequence[Rule]
    load_processor: Callable[[Path, dict], Any]
    ignore: Sequence[str] = ()
    prefixes: Sequence[str] = ("",)


_CONVERTERS: dict[str, Converter] = {}


def register_converter(model_type: str, converter: Converter) -> None:
    """Makes `load_pretrained` accept checkpoints whose config.json has this model_type."""
    _CONVERTERS[model_type] = converter


def supported_model_types() -> list[str]:
    return sorted(_CONVERTERS)


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A loaded tower: `module.apply({"params": params}, inputs)` gives [batch, hidden]."""

    module: nn.Module
    params: dict
    processor: Any
    modality: str
    source: str
    config: dict = dataclasses.field(default_factory=dict)


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the module (all problems listed at once)."""


_BIN_HELP = """\
{path} holds only {files}; this project reads safetensors only (no pickle). Convert once
with transformers and PyTorch:
    from transformers import AutoModel, AutoTokenizer
    AutoModel.from_pretrained("{path}").save_pretrained("{path}", safe_serialization=True)
(or sentence-transformers: SentenceTransformer("{path}").save("{path}")), then load again."""


def config_value(config: Mapping, key: str, source: str, default: Any = ...) -> Any:
    """config[key], or a ValueError naming the missing field and file."""
    if key in config:
        return config[key]
    if default is ...:
        raise ValueError(f"{source}: required field {key!r} is missing")
    return default


def read_json(path: Path) -> dict:
    """Parses a JSON file; the error names the file."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def read_safetensors(checkpoint_dir: Path) -> dict[str, np.ndarray]:
    """All tensors of model.safetensors, or of the shards in model.safetensors.index.json."""
    single = checkpoint_dir / "model.safetensors"
    index = checkpoint_dir / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        shards = sorted(set(config_value(read_json(index), "weight_map", str(index)).values()))
        tensors = {}
        for shard in shards:
            tensors.update(load_file(checkpoint_dir / shard))
        return tensors
    others = sorted(
        p.name for p in checkpoint_dir.iterdir() if p.suffix in (".bin", ".pt", ".h5", ".msgpack")
    )
    if others:
        raise ValueError(_BIN_HELP.format(path=checkpoint_dir, files=", ".join(others)))
    raise FileNotFoundError(
        f"{checkpoint_dir} has no model.safetensors or model.safetensors.index.json"
    )


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        flat.update(_flatten(value, path) if isinstance(value, Mapping) else {path: value})
    return flat


def _unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def _targets(paths: Iterable[str], rules: Sequence[Rule]) -> dict[str, tuple[str, Transform]]:
    """Flax path -> (checkpoint name without prefix, transform), by the first matching rule."""
    targets = {}
    for path in paths:
        for rule in rules:
            match = re.fullmatch(rule.pattern, path)
            if match:
                targets[path] = (match.expand(rule.target), rule.transform)
                break
        else:
            raise NotImplementedError(f"converter has no rule for Flax parameter {path!r}")
    return targets


def _best_prefix(names: Iterable[str], tensors: Mapping, prefixes: Sequence[str]) -> str:
    """The prefix under which most expected names exist in the checkpoint."""
    names = list(names)
    return max(prefixes, key=lambda prefix: sum(prefix + n in tensors for n in names))


def convert_params(
    tensors: Mapping[str, np.ndarray],
    expected: Mapping,
    converter: Converter,
    source: str,
) -> dict:
    """Checkpoint tensors -> Flax params shaped and typed like `expected` (a tree of
    ShapeDtypeStructs), or one CheckpointMismatchError listing every problem."""
    flat_expected = _flatten(expected)
    targets = _targets(flat_expected, converter.rules)
    prefix = _best_prefix((name for name, _ in targets.values()), tensors, converter.prefixes)
    params, missing, mismatched, used = {}, [], [], set()
    for path, (name, transform) in targets.items():
        name, spec = prefix + name, flat_expected[path]
        if name not in tensors:
            missing.append(f"{name} (for {path}, shape {tuple(spec.shape)})")
            continue
        used.add(name)
        value = transform(tensors[name])
        # Only a change of rank may reshape (fused heads, [1, 1, D] tokens): a same-rank
        # shape difference is a real mismatch, never silently reinterpreted.
        reshapable = value.ndim != len(spec.shape) and value.size == math.prod(spec.shape)
        if value.shape != tuple(spec.shape) and not reshapable:
            stored = tuple(tensors[name].shape)
            layout = f" ({value.shape} in Flax layout)" if value.shape != stored else ""
            mismatched.append(
                f"{name}: checkpoint {stored}{layout}, model expects {tuple(spec.shape)} for {path}"
            )
            continue
        params[path] = np.asarray(value.reshape(spec.shape), dtype=spec.dtype)
    unexpected = sorted(
        name
        for name in tensors
        if name not in used and not any(re.fullmatch(p, name) for p in converter.ignore)
    )
    _raise_if_problems(source, missing, unexpected, mismatched)
    return _unflatten(params)


def _raise_if_problems(source: str, missing, unexpected, mismatched) -> None:
    sections = [
        (f"{len(items)} {title}:\n  " + "\n  ".join(items))
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if items
    ]
    if sections:
        raise CheckpointMismatchError(
            f"Checkpoint {source} does not match the model.\n" + "\n".join(sections)
        )


def _resolve_dir(path: str | Path, allow_download: bool) -> Path:
    checkpoint_dir = Path(path).expanduser()
    if checkpoint_dir.is_dir():
        return checkpoint_dir
    if checkpoint_dir.exists():
        raise NotADirectoryError(f"Checkpoint path {checkpoint_dir} is a file, not a directory")
    if not allow_download:
        raise FileNotFoundError(
            f"Checkpoint directory {checkpoint_dir} does not exist (to fetch a Hugging Face "
            "hub name instead, pass allow_download=True)"
        )
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*/*.json"]
    return Path(snapshot_download(str(path), allow_patterns=patterns))


def converter_for(config: Mapping, config_path: Path) -> Converter:
    """The registered converter for config.json's model_type."""
    model_type = config_value(config, "model_type", str(config_path))
    if model_type not in _CONVERTERS:
        raise ValueError(
            f"{config_path}: unsupported model_type {model_type!r}; supported: "
            f"{', '.join(supported_model_types())}"
        )
    return _CONVERTERS[model_type]


def load_pretrained(
    path: str | Path, *, allow_download: bool = False, **overrides: Any
) -> Pretrained:
    """Loads a local Hugging Face checkpoint directory as a Flax tower.

    Reads config.json, model.safetensors (or a sharded index) and the tokenizer /
    preprocessor files. `overrides` set tower config fields, e.g. dtype=jnp.bfloat16,
    remat=True, pooling="cls". With allow_download=True a missing local `path` is taken
    as a Hugging Face hub name and fetched (safetensors and configs only).
    Returns params as plain arrays in the tree `module.init` creates (unboxed).
    """
    checkpoint_dir = _resolve_dir(path, allow_download)
    config_path = checkpoint_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} has no config.json")
    config = read_json(config_path)
    converter = converter_for(config, config_path)
    tensors = read_safetensors(checkpoint_dir)
    module = converter.build_module(checkpoint_dir, config, **overrides)
    inputs = converter.example_inputs(module)
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), inputs))
    expected = nn.unbox(boxed)["params"]
    params = convert_params(tensors, expected, converter, str(checkpoint_dir))
    return Pretrained(
        module=module,
        params=params,
        processor=converter.load_processor(checkpoint_dir, config),
        modality=converter.modality,
        source=str(checkpoint_dir),
        config=config,
    )


def replace_fields(config: Any, overrides: Mapping[str, Any], source: str) -> Any:
    """dataclasses.replace with an error that names unknown fields and lists valid ones."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(
            f"{source}: unknown config field(s) {unknown}; valid fields: {sorted(names)}"
        )
    return dataclasses.replace(config, **overrides)
