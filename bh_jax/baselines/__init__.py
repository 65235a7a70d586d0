"""Baselines: histogram matching (HM) and spectrum swapping (SSIMH)."""

from bh_jax.baselines.hm import histogram_match
from bh_jax.baselines.ssimh import spectrum_swap

__all__ = ["histogram_match", "spectrum_swap"]
