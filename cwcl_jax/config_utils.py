"""Helpers for configs-as-code: loading shared config modules, JSON form, dtype names, and
the recorded config of a run (`config.json` in its workdir)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jax.numpy as jnp
import ml_collections
from absl import logging

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


def recorded_run_config(
    workdir: str, config: ml_collections.ConfigDict, overrides: dict
) -> ml_collections.ConfigDict:
    """The config a checkpoint is evaluated with.

    Everything but `eval` comes from the run's `workdir/config.json` (towers, frozen path,
    data, loss, ...), so a later edit of the config file does not change what is evaluated;
    `eval` comes from `config` (the --config file); fields the record lacks (added to the
    code after the run) are filled from `config` with a warning. Command-line overrides
    (`--config.<field>=...`, flat `overrides`) apply last: a moved dataset or frozen
    checkpoint, a smaller mesh.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"--mode=eval: {path} not found; evaluate the workdir of a training run")
    try:
        with open(path) as f:
            recorded = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--mode=eval: cannot read the run's config {path}: {e}") from e
    current = to_json_dict(config)
    _fill_missing(recorded, current, path, prefix="")
    recorded["eval"] = current["eval"]
    run_config = ml_collections.ConfigDict(_tuples(recorded))
    run_config.lock()  # an override naming no field of the record fails
    for field, value in overrides.items():
        try:
            run_config.update_from_flattened_dict({field: value})
        except (KeyError, AttributeError, TypeError) as e:
            msg = f"--config.{field}: not applicable to the run's config {path}: {e}"
            raise ValueError(msg) from e
    _check_tower_paths(run_config, path)
    return run_config


def _fill_missing(recorded: dict, current: dict, path: str, prefix: str) -> None:
    for key, value in current.items():
        if key not in recorded:
            logging.warning("%s has no field %s%s; using --config's %r", path, prefix, key, value)
            recorded[key] = value
        elif isinstance(value, dict) and isinstance(recorded[key], dict) and key != "overrides":
            # A tower's `overrides` define its architecture: the record's stand whole.
            _fill_missing(recorded[key], value, path, f"{prefix}{key}.")


def _tuples(tree):
    """JSON lists back to the tuples configs use (sharding rules, loss directions, ks)."""
    if isinstance(tree, dict):
        return {k: _tuples(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return tuple(_tuples(v) for v in tree)
    return tree


def _check_tower_paths(run_config: ml_collections.ConfigDict, path: str) -> None:
    for side in ("frozen", "trainable"):
        tower_path = run_config.model[side].path
        if tower_path and not os.path.isdir(tower_path):
            raise ValueError(
                f"{path} records model.{side}.path={tower_path}, which is not a directory; "
                f"put the checkpoint back or pass --config.model.{side}.path=<its new location>"
            )
