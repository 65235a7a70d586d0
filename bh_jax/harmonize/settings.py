"""Every harmonization setting in one place: the objective's weights, the
intensity calibration, the solver, and each solver's defaults.

The defaults were chosen on the built-in data set's validation subjects; the
sweeps that chose them, with their commands, are in docs/methods.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import jax


@dataclass(frozen=True)
class Weights:
    """b1 (correlation), b2 (edges), alpha (prior) of the objective.

    A pytree: the engine passes it to its compiled program as data, so new
    weights do not recompile.
    """

    b1: float = 1.0
    b2: float = 0.0
    alpha: float = 0.01


jax.tree_util.register_dataclass(Weights, data_fields=["b1", "b2", "alpha"], meta_fields=[])

# CalibrationConfig.scan_nyul_gain_flatter_only: on which scans the contrast gain only raises.
GAIN_FLATTER_ONLY = ("all", "noisy", "none")
# CalibrationConfig.nyul_scale: what the transform's Nyul maps map onto.
NYUL_SCALES = ("standard", "mean")


@dataclass(frozen=True)
class CalibrationConfig:
    """How to fit the intensity transform of a site's (or one volume's) scans by the
    flow's change-of-variables likelihood (`bh_jax.harmonize.calibration`).

    Attributes:
      segments: linear pieces of the monotone curve (1 = an affine map).
      steps: L-BFGS iterations of a curve fit (each one evaluation of the
        likelihood and its gradient, more when the line search rejects a step).
      pool: slices the curve (or a field) is fitted on (evenly spaced among those
        with at least half the largest brain area; a fixed number, so one
        compiled program serves volumes of any length).
      shared: one curve for all the volumes harmonized together, fitted on
        their slices pooled (`Calibrator.shared_curve`), instead of one per
        volume: for scans of one scanner and protocol, whose intensity map is
        the same for every subject. The pooled fit cannot absorb a subject's
        own tissue contrast into the map, so that contrast survives. Pass ONE
        site's volumes together (`harmonize.py --sites` groups a run's inputs).
      noise_matched: fit on each volume smoothed until its noise-to-contrast
        ratio is the target's (`preprocess.match_noise`; volumes no noisier than
        the target are used as they are), then map the unsmoothed volume: the
        flow finds excess noise unlikely, and without this the fit shrinks it
        by compressing the contrast.
      noise_by_site: with `shared`, noise-match a site's volumes only if the site
        as a whole is noisier than the target (`pipeline.site_is_noisy`: the median
        of its volumes' ratios), so that a clean site's low-contrast subject, whose
        ratio is high too, is left as it is. Off: on 20 validation subjects it
        lowered the shifts' PSNR and WM Dice (the low-contrast scans it leaves
        unsmoothed segment worse; docs/methods.md).
      smooth_output: s in [0, 1]: map the volume smoothed with s times the
        matching Gaussian's sigma (the transform's `smoothing_mm`), so that the
        output's noise is nearer the target's; 0 (or False): the output keeps its
        noise; 1 (or True): all of the matching smoothing, +0.4 to +1.1 dB and
        higher SSIM on the four scanner sites but a blurrier grey/white boundary
        (site D's WM Dice below Nyul's); 0.5: chosen with `scan_nyul_weight`
        (docs/methods.md). The shifts, as clean as the target, are not smoothed.
      field_penalty: also fit a smooth multiplicative field per volume (a
        quadratic log-field over the brain, held curve, then the curve refitted
        on the corrected volumes), with this L2 penalty on its coefficients;
        None: no field.
      field_steps: L-BFGS iterations of a field fit. 10: the field's loss is not
        smooth (voxels cross the curve's knots as the field changes), so after about
        five steps most line searches spend 13 to 20 evaluations for changes of
        1e-5 bits/dim; on the validation subjects 10 steps were within 0.02 dB
        and 0.00005 WM Dice of 20 (or above them) on all eight domains, in less
        time; 6 lost 0.35 dB on gamma1.5 (docs/methods.md).
      fallback: where the safety net flags a volume (the flow scores Nyul's map
        of it more than `safety_margin` above the fitted transform, or the fit did
        not converge), use Nyul's map instead of only flagging the volume in its
        report (`pipeline.safety_net`). Off: with no margin, on the test subjects
        it replaced the site's curve on every intensity shift (30.6 dB instead of
        the curve's 35-42, docs/methods.md).
      safety_margin: bits/dim by which the prior must score Nyul's map above the
        transform for the safety net to flag the volume. A per-scan likelihood
        prefers each scan's own normalisation onto the population by a few
        hundredths of a bit/dim even where the site's map is far closer to the
        truth; the more so the further the subject is from the population. 0.1:
        on 80 validation volumes in correctly grouped sites of 5 (every domain)
        it flags none (0.05: 8; 0: 53), and it flags a clean scan put in a noisy
        site and 4 of the 5 scans of an `exp` site that a noisy scan joined
        (docs/methods.md).
      nyul_weight: w in [0, 1]: the transform is (1 - w) * the fitted curve +
        w * the site's Nyul map, both of the same field-corrected, noise-matched
        scans (the landmarks measured on the slices the curve was fitted on,
        `pipeline.SiteCurve.landmarks`). The likelihood's curve carries the prior's
        preference for low-contrast images, which costs white-matter Dice; per-site
        Nyul does not. 1: chosen with `scan_nyul_weight` 0.375 (0.25 since) on 20
        validation subjects (docs/methods.md); the curve's shape then drops out, and the flow's
        likelihood acts through each scan's field (which corrects the slices the
        landmarks are measured on), the noise matching and the safety net. 0: the
        curve alone.
      scan_nyul_weight: v in [0, 1]: then (1 - v) * that transform + v * the
        volume's own Nyul map, its landmarks measured on the same corrected slices.
        A scan's own map moves the subject onto the population's contrast, which a
        target-trained segmenter separates best; the site's map keeps more of the
        subject's own. 0.25 (with `nyul_weight` 1 and the contrast gain): on 20
        validation subjects run as four sites of 5 scans (the test split's size)
        0.7 to 0.8 dB above 0.375 on every shift at the same WM Dice (within
        0.0001), and above Nyul's PSNR, SSIM and Dice on the scanner sites of the
        standard validation subjects (docs/methods.md). 0 (and
        `scan_nyul_contrast_gain` 0): none.
      scan_nyul_contrast_gain: k >= 0: each scan's weight of its own map is
        clip(v + k * (1 - r), 0, 1) instead of v, where r is the scan's tissue
        contrast under its site's map over the standard scale's (the spread of its
        10th to 90th percentile landmarks; 1 for a site's typical subject): a
        scan with less contrast than its site's subjects takes more of its own map
        (a target-trained segmenter separates a low-contrast subject's white
        matter better at the population's contrast), one with more takes less
        unless `scan_nyul_gain_flatter_only` covers it (its own contrast segments
        as well and keeps its PSNR). 0: v for every scan. 4 (with 'noisy', at v 0.375): on 20
        validation subjects the shifts' worst WM Dice margin over Nyul's +0.0005
        instead of +0.0001 for 0.7 to 1.0 dB of PSNR (still 3.5 to 5.6 above
        Nyul), and at or above Nyul's PSNR, SSIM and Dice on the scanner sites of
        the standard validation subjects (docs/methods.md).
      scan_nyul_gain_flatter_only: on which scans the gain only raises the weight
        (of scans flatter than their site's typical one, r < 1; the others keep v):
        'all', 'noisy' (the scans the fit smoothed to the target's noise: their
        landmark spread also carries noise and their field; a scan as clean as the
        target with more contrast than its site's typical one takes less of its own
        map, which keeps its own contrast) or 'none' (both sides on every scan).
        'noisy': taking less from high-contrast scans cost a noisy site's SSIM on
        validation, and on the clean shifts it was worth 1.6 to 2.6 dB over 'all'
        at the same WM Dice (within 0.00011; docs/methods.md).
      nyul_scale: what the site's and the scan's Nyul maps of the transform map onto:
        'standard', Nyul's standard scale (each target training volume's landmarks
        stretched onto common end points, then averaged; the `--method nyul`
        baseline's), or 'mean', the target training volumes' landmarks averaged as
        measured (`TargetReference.nyul_mean`), as the site's own landmarks are. A
        prior without them maps onto the standard scale, and the report says so.
        'mean': on 20 validation subjects as four sites of 5, +0.09 to +0.12 dB on
        every shift at the same WM Dice (within 0.00003), and within 0.03 dB, 0.0002
        SSIM and 0.0001 Dice of the standard scale on the scanner sites, above
        Nyul's (docs/methods.md).
    """

    # Chosen on the validation subjects (docs/methods.md).
    segments: int = 4
    steps: int = 30
    pool: int = 16
    shared: bool = True
    noise_matched: bool = True
    noise_by_site: bool = False
    smooth_output: float = 0.5
    field_penalty: float | None = 1.0
    field_steps: int = 10
    fallback: bool = False
    safety_margin: float = 0.1
    nyul_weight: float = 1.0
    scan_nyul_weight: float = 0.25
    scan_nyul_contrast_gain: float = 4.0
    scan_nyul_gain_flatter_only: str = "noisy"
    nyul_scale: str = "mean"

    def __post_init__(self):
        for name in ("segments", "steps", "pool", "field_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"calibration {name} must be >= 1, got {getattr(self, name)}")
        if self.field_penalty is not None and not self.field_penalty >= 0:
            raise ValueError(f"calibration field_penalty must be >= 0 or None, "
                             f"got {self.field_penalty}")
        if not 0 <= self.safety_margin < float("inf"):
            raise ValueError(f"calibration safety_margin must be a number >= 0, "
                             f"got {self.safety_margin}")
        for name in ("nyul_weight", "scan_nyul_weight", "smooth_output"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"calibration {name} must be in [0, 1], "
                                 f"got {getattr(self, name)}")
        if not 0 <= self.scan_nyul_contrast_gain < float("inf"):
            raise ValueError(f"calibration scan_nyul_contrast_gain must be a number >= 0, "
                             f"got {self.scan_nyul_contrast_gain}")
        if self.scan_nyul_gain_flatter_only not in GAIN_FLATTER_ONLY:
            raise ValueError(f"calibration scan_nyul_gain_flatter_only must be one of "
                             f"{', '.join(GAIN_FLATTER_ONLY)}, "
                             f"got {self.scan_nyul_gain_flatter_only!r}")
        if self.nyul_scale not in NYUL_SCALES:
            raise ValueError(f"calibration nyul_scale must be one of {', '.join(NYUL_SCALES)}, "
                             f"got {self.nyul_scale!r}")


SOLVERS = ("latent", "alternating", "image", "curve")
INITS = ("calibrated", "hm", "template", "source")


@dataclass(frozen=True)
class SolverConfig:
    """How to harmonize.

    Attributes:
      solver: 'latent', 'alternating', 'image' or 'curve'.
      steps: optimiser steps (latent, image) or iterations (alternating);
        unused by 'curve'.
      learning_rate: Adam's peak step on z (latent) or on x (image), or the
        image step (alternating).
      schedule: 'constant' or 'cosine' (decay to 0 over `steps`); latent and image.
      weights: default b1, b2, alpha (a run can pass others without
        recompiling). For `alternating`, alpha is the shrink of z per
        iteration, as in the published code.
      percentile: non-edge mask threshold (percentile of in-brain gradients).
      gradient: 'sobel' or 'diff'.
      init: x_init: 'calibrated' (the source through its site's (or volume's)
        maximum-likelihood intensity transform, `bh_jax.harmonize.calibration`),
        'hm' (the source histogram-matched to the target), 'template' (the
        target's mean slice) or 'source'.
      calibration: how the 'calibrated' curve is fitted.
    """

    solver: str = "curve"
    steps: int = 1
    learning_rate: float = 0.05
    schedule: str = "cosine"
    weights: Weights = field(default_factory=Weights)
    percentile: float = 30.0
    gradient: str = "sobel"
    init: str = "calibrated"
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


# The default: each site's maximum-likelihood intensity curve with a smooth field
# per volume, no per-slice optimisation; the best method on the validation
# subjects of all eight domains (docs/methods.md).
DEFAULT_SOLVER = "curve"

DEFAULTS = {
    # The published method: Adam on z from the histogram-matched source.
    "latent": SolverConfig(solver="latent", steps=10, init="hm"),  # lr 0.05, b1 1, b2 0, a 0.01
    # The published scheme: 10 iterations, z shrunk by alpha = 1e-3 each time.
    "alternating": SolverConfig(solver="alternating", steps=10, learning_rate=1.0, init="hm",
                                weights=Weights(b1=1.0, b2=1.0, alpha=1e-3)),
    # Adam on the image, exact -log p(x) / D as the prior (`bh_jax.harmonize.solvers`).
    "image": SolverConfig(solver="image", steps=20, learning_rate=0.002, schedule="constant",
                          init="hm",
                          weights=Weights(b1=1.0, b2=0.0, alpha=0.1)),
    # The site's maximum-likelihood intensity curve and each volume's field
    # (`bh_jax.harmonize.calibration`; 4 segments, 30 L-BFGS steps, 16 pooled slices).
    "curve": SolverConfig(),
}


def default_settings(solver: str = DEFAULT_SOLVER, **overrides) -> SolverConfig:
    """`solver`'s defaults with `overrides` (SolverConfig fields; None keeps the default).

    Raises ValueError for an unknown solver, or for a `calibration` given to
    settings that do not start from the calibrated curve (it would be ignored).
    """
    try:
        base = DEFAULTS[solver]
    except KeyError:
        raise ValueError(f"solver must be one of {sorted(DEFAULTS)}, got {solver!r}") from None
    settings = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if overrides.get("calibration") is not None and settings.init != "calibrated":
        raise ValueError(f"calibration settings apply to init 'calibrated' only, not "
                         f"{settings.init!r} (use --init calibrated or --solver curve)")
    return settings
