"""Evaluation library behind `cwcl_jax.evaluate`.

metrics (ranks, recall, confusion), zeroshot (prompt ensembles, per-template spread),
retrieval (both directions), templates and class_names (data files), tasks (config ->
specs), gather (sharded padded batches -> host), results (JSON, scalars), plots (PNG).
"""
