"""cwcl_jax: cross-modal transfer with the Continuously Weighted Contrastive Loss."""

__version__ = "0.1.0"
