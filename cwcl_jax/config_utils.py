"""Helpers for configs-as-code: loading shared config modules, JSON form, dtype names."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jax.numpy as jnp
import ml_collections

_DTYPE_FIELDS = ("dtype", "param_dtype")


def load_sibling(config_file: str, name: str) -> ModuleType:
    """Import `<dir of config_file>/<name>.py`, e.g. configs/common.py from configs/demo.py.

    Config files are loaded by path (config_flags), not as a package, so a plain
    `import configs.common` would depend on the working directory.
    """
    path = Path(config_file).resolve().parent / f"{name}.py"
    module_name = f"_cwcl_configs_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load config module {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def to_json_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON types (tuples become lists), for checkpoints and logs."""
    return json.loads(config.to_json_best_effort())


def tower_overrides(overrides: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """Tower config overrides with dtype names ("bfloat16") turned into jnp dtypes."""
    result = dict(overrides)
    for field in _DTYPE_FIELDS:
        if isinstance(result.get(field), str):
            try:
                result[field] = jnp.dtype(result[field])
            except TypeError as e:
                raise ValueError(f"tower override {field}={result[field]!r}: {e}") from e
    return result
