"""Datasets and input pipelines; importing this package registers its TFDS builders.

Registered builders: `cwcl_shapes` (procedural image-caption pairs), `cwcl_spoken`
(espeak-ng speech), `cwcl_manifest` (the user's own JSONL/CSV pairs) and `cwcl_slurp`.
"""

from cwcl_jax.data import manifest, shapes, slurp, spoken

__all__ = ["manifest", "shapes", "slurp", "spoken"]
