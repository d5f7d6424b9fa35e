"""Paper scale, image-text (LiT setting): frozen ViT-B/16 image tower, trainable
BERT-base-sized text tower, CWCL, global batch 16000, AdamW lr 1e-3.

Target: 128 accelerator chips (e.g. TPU v5p-256 / v4-256) as data 8 x fsdp 16, with
accum_steps=5: 16000 = 128 shards x 5 micro-batches x 25 examples. Check it compiles
and read the per-device memory on any machine, without weights or data:

  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=128 \\
  python -m cwcl_jax.main --config configs/lit_cwcl_vit_b16.py --workdir /tmp/c \\
    --mode=compile_check

To train, point the frozen tower at a local Hugging Face ViT-B/16 checkpoint
(ViTModel or CLIPVisionModel layout) and the text tokenizer at a BERT vocabulary:
  --config.model.frozen.path=/ckpt/vit-base-patch16-224 --config.data.tokenizer=/ckpt/bert
and set config.data to an image-text TFDS dataset (default: coco_captions).
"""

from __future__ import annotations

import ml_collections

from cwcl_jax.config_utils import load_sibling

common = load_sibling(__file__, "common")

VIT_B16 = dict(
    image_size=224, patch_size=16, hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072,
    pooling="cls", dtype="bfloat16",
)  # fmt: skip
BERT_BASE = dict(
    vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072,
    pooling="mean", dtype="bfloat16", remat=True,
)  # fmt: skip


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = common.base_config()
    config.batch_size = 16000
    config.accum_steps = 5
    config.total_steps = 20_000
    config.log_every_steps = 50
    config.checkpoint_every_steps = 1000
    config.eval_every_steps = 1000
    config.mesh = ml_collections.ConfigDict({"data": 8, "fsdp": 16, "tensor": 1})
    config.sharding.frozen = ((r".*", "logical"),)  # frozen ViT split over fsdp as well

    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 1000
    config.optimizer.weight_decay = 1e-4

    config.loss.name = "cwcl"
    config.loss.weight_kind = "paper"

    # arch + overrides describe the frozen ViT for compile_check; training loads `path`.
    config.model.frozen = common.tower("image", path="", arch="tiny_vit", **VIT_B16)
    config.model.trainable = common.tower("text", arch="tiny_bert", **BERT_BASE)
    config.model.embed_dim = 768

    config.data.name = "coco_captions"
    config.data.features.image = "image"
    config.data.features.text = "captions/text"
    config.data.features.labels = ()
    config.data.image_size = 224
    config.data.max_text_length = 32
    return config
