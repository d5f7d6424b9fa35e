"""Demo: a tiny ViT learns all-MiniLM-L6-v2's text space from `cwcl_shapes` (2 CPU cores).

python -m cwcl_jax.main --config configs/demo.py --workdir /tmp/cwcl_demo
python -m cwcl_jax.main --config configs/demo.py:tiny ...   # seconds: tests, smoke runs
"""

from __future__ import annotations

import ml_collections

from cwcl_jax import evaluate
from cwcl_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.batch_size = 128
    config.total_steps = 120  # about 2.5-5 s a step on 2 CPU cores: 5-10 minutes
    config.log_every_steps = 10
    config.checkpoint_every_steps = 60
    config.optimizer.learning_rate = 2e-3
    config.optimizer.warmup_steps = 20

    config.model.frozen = common.tower("text", path=common.minilm_path())
    config.model.trainable = common.tower("image", arch="tiny_vit", image_size=64)

    config.data.name = "cwcl_shapes"
    config.data.features.image = "image"
    config.data.features.text = "caption"
    config.data.image_size = 64
    config.data.max_text_length = 32
    # No frozen cache: 120 x 128 steps are 0.77 epochs, fewer frozen forwards than a cache
    # build of all 20000 captions (benchmarks/frozen_cache.py, docs/performance.md).
    config.frozen_cache.enabled = False
    config.eval_every_steps = 300
    config.eval.tasks.shape = evaluate.zeroshot_task("shape", "image", templates="shapes")
    config.eval.tasks.color = evaluate.zeroshot_task("color", "image", templates="colors")
    config.eval.tasks.caption = evaluate.retrieval_task("image", "text")
    if arg == "tiny":
        _tiny(config)
    elif arg:
        raise ValueError(f"configs/demo.py: unknown argument {arg!r}; use 'tiny' or nothing")
    return config


def _tiny(config: ml_collections.ConfigDict) -> None:
    """A few steps on the 256-example dataset with a 2-layer ViT: seconds, for tests."""
    config.batch_size = 16
    config.total_steps = 6
    config.log_every_steps = 2
    config.checkpoint_every_steps = 3
    config.eval_every_steps = 0  # smoke runs skip evaluation; --config.eval_every_steps=3 adds it
    config.eval.batch_size = 48  # 128 test examples: the last batch is padded
    config.optimizer.warmup_steps = 2
    config.data.name = "cwcl_shapes/tiny"
    config.data.image_size = 32
    config.data.max_text_length = 16
    config.data.read_threads = 1
    config.model.trainable = common.tower(
        "image", arch="tiny_vit", image_size=32, num_layers=2, hidden_size=64, mlp_dim=128
    )
