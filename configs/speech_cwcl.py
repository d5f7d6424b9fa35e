"""Paper scale, speech-text: frozen BERT-base-sized text tower, trainable speech tower
initialized from a Whisper encoder (whisper-small's: 768 wide, 12 layers), CWCL, global
batch 16000, AdamW lr 1e-3.

Target: 128 chips as data 8 x fsdp 16, accum_steps=25 (16000 = 128 x 25 x 5), 10 s
utterances (1000 mel frames): about 4 GiB per device by XLA's estimate. Compile check
without weights or data:

  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=128 \\
  python -m cwcl_jax.main --config configs/speech_cwcl.py --workdir /tmp/c --mode=compile_check

To train: --config.model.frozen.path=/ckpt/sentence-encoder (BERT/RoBERTa layout)
--config.model.trainable.path=/ckpt/whisper-small (its encoder initializes the tower), and
config.data for a speech-text dataset (default: cwcl_slurp with its manual_dir).
"""

from __future__ import annotations

import ml_collections

from cwcl_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")

TEXT_BASE = dict(
    vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072,
    pooling="mean", dtype="bfloat16",
)  # fmt: skip
WHISPER_SMALL_ENCODER = dict(
    n_mels=80, hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072,
    max_positions=1500, position_embedding="learned", dtype="bfloat16", remat=True,
)  # fmt: skip


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = common.base_config()
    config.batch_size = 16000
    config.accum_steps = 25
    config.total_steps = 20_000
    config.log_every_steps = 50
    config.checkpoint_every_steps = 1000
    config.eval_every_steps = 1000
    config.mesh = ml_collections.ConfigDict({"data": 8, "fsdp": 16, "tensor": 1})

    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 1000

    config.loss.name = "cwcl"
    config.loss.weight_kind = "paper"

    config.model.frozen = common.tower("text", path="", arch="tiny_bert", **TEXT_BASE)
    # path: a Whisper checkpoint whose encoder initializes the tower (arch: compile_check).
    config.model.trainable = common.tower("speech", path="", arch="small", **WHISPER_SMALL_ENCODER)
    config.model.embed_dim = 768

    config.data.name = "cwcl_slurp"
    config.data.features.image = None
    config.data.features.speech = "audio"
    config.data.features.text = "text"
    config.data.audio_max_seconds = 10.0
    config.data.n_mels = 80
    config.data.max_text_length = 32
    return config
