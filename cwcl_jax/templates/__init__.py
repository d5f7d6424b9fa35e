"""Prompt template sets (JSON lists of strings with one `{}`), loaded by cwcl_jax.eval.templates."""
