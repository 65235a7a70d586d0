"""bh_jax: BlindHarmony, blind MR harmonization with normalizing flows, in JAX."""

__version__ = "0.1.0"
