"""Intensity transforms: what a method did to a scan, applied to any of its voxels.

Methods fit on the prior's grid (`bh_jax.resample`); the output is written on the
scan's own grid. A method's result is therefore an `IntensityTransform`: a monotone
piecewise-linear curve from the scan's normalised intensities ([0, 1] after
`preprocess.IntensityScale`) to harmonized ones, optionally applied after dividing
by a smooth multiplicative field defined in world (scanner) millimetres, so that it
can be evaluated at the native voxels' positions, whatever their size or orientation.

Curve methods give theirs exactly (the fitted intensity curve, HM's quantile map,
Nyul's landmarks). For methods whose result is an image (the per-slice solvers,
SSIMH, the learned baselines), `fit_transform` summarises it: a monotone curve
(isotonic regression, `scipy.optimize.isotonic_regression`) and a quadratic log-field
fitted from source to result, alternately, by least squares.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import isotonic_regression

N_FIELD_TERMS = 9  # x, y, z, x^2, y^2, z^2, xy, xz, yz (the constant is the curve's)


def field_basis(world: np.ndarray, center: np.ndarray, half: np.ndarray) -> np.ndarray:
    """[..., 9] quadratic terms of world positions [..., 3] (mm), normalised to the
    brain's box (`center`, `half`-extents)."""
    x, y, z = np.moveaxis((np.asarray(world, np.float64) - center) / half, -1, 0)
    return np.stack([x, y, z, x * x, y * y, z * z, x * y, x * z, y * z], axis=-1)


@dataclass(frozen=True)
class BiasField:
    """A smooth multiplicative field exp(sum_k c_k phi_k(world)) over the brain's box."""

    coefficients: np.ndarray  # [9]
    center: np.ndarray  # [3] mm
    half: np.ndarray  # [3] mm

    def log_field(self, world: np.ndarray) -> np.ndarray:
        """[...] log of the field at world positions [..., 3]."""
        return field_basis(world, self.center, self.half) @ np.asarray(self.coefficients,
                                                                      np.float64)

    def as_dict(self) -> dict:
        return {"coefficients": np.asarray(self.coefficients).tolist(),
                "center_mm": np.asarray(self.center).tolist(),
                "half_extent_mm": np.asarray(self.half).tolist()}


@dataclass(frozen=True)
class IntensityTransform:
    """unit source intensity -> unit harmonized intensity.

    Attributes:
      knots: [K] increasing source intensities; values: [K] non-decreasing.
      extrapolate: continue the end segments past the end knots (Nyul) instead of
        holding the end values.
      field: divide the source by this field before the curve (None: no field).
      kind: where it came from ('curve', 'hm', 'nyul', 'fitted'), for the report.
      smoothing_mm: the source is first smoothed in the brain, in its axial planes,
        by a Gaussian of this std in mm (the site model's noise matching); 0: not.
        It needs whole images, so `__call__` (voxel by voxel) does not apply it:
        `pipeline.transformed_slices` and `run.native_output` do.
    """

    knots: np.ndarray
    values: np.ndarray
    extrapolate: bool = False
    field: BiasField | None = None
    kind: str = "curve"
    smoothing_mm: float = 0.0

    def __call__(self, unit: np.ndarray, world: np.ndarray | None = None) -> np.ndarray:
        """float32 harmonized intensities in [0, 1] of `unit` intensities [...] at
        world positions [..., 3] (needed only with a field)."""
        x = np.asarray(unit, np.float64)
        if self.field is not None:
            if world is None:
                raise ValueError("this transform has a field: it needs the voxels' positions")
            x = x * np.exp(-self.field.log_field(world))
        return np.clip(self.curve(x), 0.0, 1.0).astype(np.float32)

    def curve(self, corrected: np.ndarray) -> np.ndarray:
        """float64 values of the curve alone at intensities already divided by the
        field (and smoothed), not clipped to [0, 1]."""
        x = np.asarray(corrected, np.float64)
        knots, values = np.asarray(self.knots, np.float64), np.asarray(self.values, np.float64)
        y = np.interp(x, knots, values)
        if self.extrapolate:
            run, rise = np.diff(knots)[[0, -1]], np.diff(values)[[0, -1]]
            slopes = np.divide(rise, run, out=np.zeros(2), where=run > 0)
            y = np.where(x < knots[0], values[0] + slopes[0] * (x - knots[0]), y)
            y = np.where(x > knots[-1], values[-1] + slopes[1] * (x - knots[-1]), y)
        return y

    def as_dict(self) -> dict:
        return {"kind": self.kind, "source": np.asarray(self.knots).tolist(),
                "target": np.asarray(self.values).tolist(), "extrapolate": self.extrapolate,
                "field": self.field.as_dict() if self.field is not None else None,
                "smoothing_mm": self.smoothing_mm}


def monotone_knots(knots: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Strictly increasing knots (repeats merged) and non-decreasing values."""
    knots, first = np.unique(np.asarray(knots, np.float64), return_index=True)
    return knots, np.maximum.accumulate(np.asarray(values, np.float64)[first])


def averaged(first: IntensityTransform, second: IntensityTransform,
             weight: float) -> IntensityTransform:
    """(1 - weight) * first + weight * second, as they map voxels (clipped to [0, 1]),
    as one transform of the same corrected intensities: exact between the outer
    knots of the two (the second's extrapolation included), ends held beyond. The
    field, smoothing and kind are the first's; the second must be a bare curve."""
    if second.field is not None or second.smoothing_mm > 0:
        raise ValueError("averaged: the second transform must be a bare curve")
    knots = np.union1d(first.knots, second.knots)
    knots = np.union1d(knots, np.concatenate([clip_crossings(t, knots) for t in (first, second)]))
    values = ((1.0 - weight) * np.clip(first.curve(knots), 0.0, 1.0)
              + weight * np.clip(second.curve(knots), 0.0, 1.0))
    return replace(first, knots=knots, values=np.maximum.accumulate(values), extrapolate=False)


def clip_crossings(transform: IntensityTransform, knots: np.ndarray) -> np.ndarray:
    """Where the curve crosses 0 or 1 between consecutive `knots` (on which it is
    linear): knots to add so that the clipped curve is piecewise linear on them."""
    values = transform.curve(knots)
    crossings = []
    for level in (0.0, 1.0):
        below, above = values[:-1] - level, values[1:] - level
        cross = below * above < 0
        crossings.append(knots[:-1][cross]
                         + below[cross] / (below[cross] - above[cross]) * np.diff(knots)[cross])
    return np.concatenate(crossings)


def brain_box(world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(center, half-extents) in mm of brain voxel positions [M, 3]."""
    low, high = world.min(axis=0), world.max(axis=0)
    return (low + high) / 2.0, np.maximum((high - low) / 2.0, 1.0)


def fit_transform(source: np.ndarray, result: np.ndarray, mask: np.ndarray,
                  world: np.ndarray | None = None, n_knots: int = 33,
                  rounds: int = 2) -> IntensityTransform:
    """The transform that best maps `source` to `result` (unit intensities of the same
    voxels, inside `mask`): a monotone curve, and with `world` ([..., 3] positions)
    a quadratic multiplicative field, fitted alternately by least squares.

    The curve is an isotonic regression summarised at `n_knots` quantiles of the
    source; the field is fitted to log(result / curve(source)) where both are
    above 1 % (ratios of near-zero intensities carry no information about it)."""
    mask = np.asarray(mask, bool)
    x = np.asarray(source, np.float64)[mask]
    y = np.asarray(result, np.float64)[mask]
    if x.size == 0:
        raise ValueError("cannot fit an intensity transform: the mask is empty")
    positions = None if world is None else np.asarray(world, np.float64)[mask]
    field = None
    corrected = x
    for _ in range(rounds if positions is not None else 1):
        order = np.argsort(corrected, kind="stable")
        fitted = isotonic_regression(y[order]).x
        levels = np.unique(np.quantile(corrected, np.linspace(0.0, 1.0, n_knots)))
        values = np.interp(levels, corrected[order], fitted)
        curve = IntensityTransform(*monotone_knots(levels, values), kind="fitted")
        if positions is None:
            return curve
        predicted = curve(corrected)
        usable = (predicted > 0.01) & (y > 0.01)
        center, half = brain_box(positions)
        basis = field_basis(positions[usable], center, half)
        # result = curve(x / f) ~ curve(x) / f locally: log f ~ log(curve / result)
        coefficients = np.linalg.lstsq(basis, np.log(predicted[usable] / y[usable]),
                                       rcond=None)[0] if usable.sum() > N_FIELD_TERMS else \
            np.zeros(N_FIELD_TERMS)
        previous = field.coefficients if field is not None else 0.0
        field = BiasField(previous + coefficients, center, half)
        corrected = x * np.exp(-field.log_field(positions))
    return IntensityTransform(curve.knots, curve.values, field=field, kind="fitted")
