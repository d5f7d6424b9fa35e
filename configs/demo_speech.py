"""Speech demo: a small speech tower learns all-MiniLM-L6-v2's text space from
`cwcl_spoken` (espeak-ng utterances), on 2 CPU cores.

  python -m cwcl_jax.main --config configs/demo_speech.py --workdir /tmp/cwcl_speech
  python -m cwcl_jax.main --config configs/demo_speech.py:tiny ...   # seconds
"""

from __future__ import annotations

import ml_collections

from cwcl_jax import evaluate
from cwcl_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.batch_size = 64
    config.total_steps = 500
    config.log_every_steps = 20
    config.checkpoint_every_steps = 100
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 50

    config.model.frozen = common.tower("text", path=common.minilm_path())
    config.model.trainable = common.tower("speech", arch="tiny", n_mels=80)

    config.data.name = "cwcl_spoken/intents"
    config.data.features.image = None
    config.data.features.speech = "audio"
    config.data.features.text = "text"
    config.data.audio_max_seconds = 3.0
    config.data.n_mels = 80
    config.data.max_text_length = 32
    # 500 x 64 steps are 9.4 epochs of 3400 transcripts: embedding them once (about 13 s)
    # beats 500 frozen forwards; benchmarks/frozen_cache.py, docs/performance.md.
    config.frozen_cache.enabled = True
    config.eval_every_steps = 500
    config.eval.tasks.intent = evaluate.zeroshot_task(
        "intent", "speech", templates="intent", readable=True
    )
    config.eval.tasks.transcript = evaluate.retrieval_task("speech", "text")
    if arg == "tiny":
        _tiny(config)
    elif arg:
        raise ValueError(f"configs/demo_speech.py: unknown argument {arg!r}; use 'tiny' or nothing")
    return config


def _tiny(config: ml_collections.ConfigDict) -> None:
    config.batch_size = 16
    config.total_steps = 4
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.optimizer.warmup_steps = 1
    config.eval_every_steps = 0  # smoke runs skip evaluation; --config.eval_every_steps=2 adds it
    config.data.name = "cwcl_spoken/intents_tiny"
    config.data.audio_max_seconds = 2.0
    config.data.read_threads = 1
    config.model.trainable = common.tower(
        "speech", arch="tiny", n_mels=80, hidden_size=64, num_layers=1, mlp_dim=128
    )
