"""Nyul: piecewise-linear intensity standardization (Nyul & Udupa 1999; Shah et al. 2011).

The method users already run (intensity-normalization's `NyulNormalize`, torchio's
`HistogramStandardization`). Training learns a *standard scale*: the mean, over the
target's training volumes, of each volume's landmark intensities (in-brain
percentiles 1, 10, 20, ..., 90, 99), every volume's landmarks first mapped linearly
so that its first and last land on common end points. Applying it maps a volume's own
landmarks onto the standard scale, linearly between landmarks and past the end ones.

Here the end points are the target volumes' mean first and last landmarks, so the
standard scale, and the output, are in the target's own units ([0, 1] after
`preprocess.IntensityScale`): intensity-normalization's algorithm with its
`output_min_value` / `output_max_value` set to them (`tools/nyul_crosscheck.py`
compares the two).

`site_landmarks` gives the per-site variant (`--method site-nyul`): one map for all of
a scanner's scans, from their mean landmarks. A scanner's intensity map is the same
for every subject; a per-scan map also normalises each subject's own tissue contrast
onto the population's, a per-site map keeps it (docs/methods.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PERCENTILES = (1.0, *map(float, range(10, 91, 10)), 99.0)


def landmarks(values: np.ndarray, percentiles: Sequence[float] = PERCENTILES) -> np.ndarray:
    """float64 [L] percentiles of a volume's in-brain intensities.

    Raises ValueError if there are none, or if the first and last coincide (a
    constant brain has no scale to standardize)."""
    values = np.asarray(values, np.float64).ravel()
    if values.size == 0:
        raise ValueError("Nyul standardization: no brain voxels")
    marks = np.percentile(values, percentiles)
    if not marks[-1] > marks[0]:
        raise ValueError(f"Nyul standardization: the brain is constant between its "
                         f"{percentiles[0]:g}th and {percentiles[-1]:g}th percentiles")
    return marks


@dataclass(frozen=True)
class NyulScale:
    """The standard scale: `intensities` [L] at `percentiles` [L] (target units)."""

    intensities: np.ndarray
    percentiles: np.ndarray

    @classmethod
    def fit(cls, volumes: Sequence[np.ndarray],
            percentiles: Sequence[float] = PERCENTILES) -> "NyulScale":
        """Learns the scale from the in-brain intensities of each training volume."""
        if not volumes:
            raise ValueError("Nyul standardization needs at least one training volume")
        marks = np.stack([landmarks(v, percentiles) for v in volumes])  # [V, L]
        low, high = marks[:, 0].mean(), marks[:, -1].mean()
        ends = marks[:, [0]], marks[:, [-1]]
        mapped = low + (marks - ends[0]) * (high - low) / (ends[1] - ends[0])
        return cls(mapped.mean(axis=0).astype(np.float32),
                   np.asarray(percentiles, np.float32))

    def __call__(self, x: np.ndarray, mask: np.ndarray,
                 source: np.ndarray | None = None) -> np.ndarray:
        """x [...] standardized inside `mask`, clipped to [0, 1]; untouched outside it.
        float32 of x's shape. `source`: the landmarks [L] to map from (e.g. a site's,
        `site_landmarks`); default: those of x inside `mask`."""
        x = np.asarray(x, np.float32)
        mask = np.asarray(mask, bool)
        out = x.copy()
        if source is None:
            source = landmarks(x[mask], self.percentiles)
        out[mask] = np.clip(piecewise_linear(x[mask], source, self.intensities), 0.0, 1.0)
        return out


def site_landmarks(volumes: Sequence[np.ndarray],
                   percentiles: Sequence[float] = PERCENTILES) -> np.ndarray:
    """float64 [L] the mean of each volume's landmarks (their in-brain intensities
    [n_v]): the source side of one Nyul map for all of a site's scans. The mean
    of the landmarks, not the landmarks of the pooled voxels, so that each scan
    counts the same whatever its brain's size. ValueError as `landmarks`."""
    if not volumes:
        raise ValueError("a site's Nyul landmarks need at least one volume")
    return np.mean([landmarks(v, percentiles) for v in volumes], axis=0)


def piecewise_linear(x: np.ndarray, knots: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The piecewise-linear map through (knots, values), extended linearly past both
    ends with the end segments' slopes (np.interp would hold the end values)."""
    knots, values = np.asarray(knots, np.float64), np.asarray(values, np.float64)
    inside = np.interp(x, knots, values)
    rise, run = np.diff(values)[[0, -1]], np.diff(knots)[[0, -1]]
    low_slope, high_slope = np.divide(rise, run, out=np.zeros(2), where=run > 0)
    below, above = x < knots[0], x > knots[-1]
    inside = np.where(below, values[0] + low_slope * (x - knots[0]), inside)
    return np.where(above, values[-1] + high_slope * (x - knots[-1]), inside)


def contrast_ratio(marks: np.ndarray, source: np.ndarray, scale: NyulScale,
                   low: float = 10.0, high: float = 90.0) -> float:
    """A volume's tissue contrast relative to the standard scale's: the spread between
    its `low` and `high` percentile landmarks (`marks`, interpolated between the
    scale's percentiles) after the map from `source` landmarks (e.g. its site's) onto
    the scale, over the scale's own spread there. 1: the contrast the map gives a
    typical volume of `source`; below 1: flatter. 1.0 if the scale has no spread."""
    percentiles = np.asarray(scale.percentiles, np.float64)
    ends = np.interp([low, high], percentiles, np.asarray(marks, np.float64))
    mapped = piecewise_linear(ends, source, scale.intensities)
    standard = np.interp([low, high], percentiles, np.asarray(scale.intensities, np.float64))
    spread = standard[1] - standard[0]
    return float((mapped[1] - mapped[0]) / spread) if spread > 0 else 1.0
