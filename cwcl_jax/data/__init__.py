"""Datasets and input pipelines; importing this package registers its TFDS builders.

Registered builders: `cwcl_shapes` (procedural image-caption pairs), `cwcl_spoken`
(espeak-ng speech), `cwcl_manifest` (the user's own JSONL/CSV pairs) and `cwcl_slurp`.
The pipeline entry points are `make_pipeline` (global jax.Array batches on a mesh) and
`make_local_pipeline` (this process's numpy batches); see docs/data.md.
"""

from cwcl_jax.data import manifest, shapes, slurp, spoken
from cwcl_jax.data.pipeline import (
    GlobalBatches,
    LocalBatches,
    default_data_config,
    make_local_pipeline,
    make_pipeline,
)

__all__ = [
    "GlobalBatches",
    "LocalBatches",
    "default_data_config",
    "make_local_pipeline",
    "make_pipeline",
    "manifest",
    "shapes",
    "slurp",
    "spoken",
]
