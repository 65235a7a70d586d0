"""Volumes in, harmonized volumes out (Python API over the engine).

    harmonizer = Harmonizer(model, params, SolverConfig(), batch_size=16)  # the default
    results = harmonize_volumes(harmonizer, one_sites_volumes, reference)

Every result carries, besides its slices on the prior's grid, the `IntensityTransform`
that writes it on the scan's own voxels (`bh_jax.harmonize.transform`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from bh_jax.baselines.hm import histogram_match
from bh_jax.baselines.nyul import NyulScale, contrast_ratio, landmarks, site_landmarks
from bh_jax.baselines.ssimh import spectrum_swap
from bh_jax.harmonize.calibration import Calibrator, IntensityCurve, curve_parameters
from bh_jax.harmonize.engine import Harmonizer
from bh_jax.harmonize.settings import CalibrationConfig, Weights
from bh_jax.harmonize.transform import (
    BiasField,
    IntensityTransform,
    averaged,
    brain_box,
    field_basis,
    fit_transform,
    monotone_knots,
)
from bh_jax.preprocess import (
    NOISE_TOLERANCE,
    PreparedVolume,
    in_plane_mm,
    match_noise,
    noise_contrast_ratio,
    sigma_in_pixels,
    smooth_in_mask,
)
from bh_jax.reference import TargetReference

METHODS = ("blindharmony", "hm", "nyul", "site-nyul", "ssimh")


@dataclass
class HarmonizedVolume:
    """One harmonized volume.

    Attributes:
      prepared: the volume as the method saw it (on the prior's grid).
      slices: [N, H, W] harmonized slices in [0, 1] (that grid).
      diagnostics: per-slice QC, name -> [N].
      transform: what the method did as an intensity transform of the volume,
        to apply to its native voxels; exact for curve methods (BlindHarmony's
        calibration, HM, Nyul), fitted from source to result for the others.
      notes: what the report should say about how it was made (noise matching,
        its site's curve, ...).
    """

    prepared: PreparedVolume
    slices: np.ndarray
    diagnostics: dict[str, np.ndarray]
    transform: IntensityTransform | None = None
    notes: dict = field(default_factory=dict)

    @property
    def exact_transform(self) -> bool:
        """Whether `transform` is what the method did (not a fit to its result)."""
        return self.transform is not None and self.transform.kind != "fitted"


@dataclass(frozen=True)
class SiteCurve:
    """A site's intensity curve, fitted on its volumes pooled.

    Attributes:
      first: fitted on the (noise-matched) volumes as they are.
      final: with fields, refitted on the volumes corrected by their fields (each
        fitted with `first` held); else `first`. Not refitted where the transform
        weights its shape 0 (`nyul_weight` 1 with a Nyul scale, `refitted` False):
        then `first` on the knots the refit would have had, so that the transform
        still spans the corrected volumes' range.
      fields: {volume path: field coefficients [9]} of the volumes it was fitted
        on (a run reuses them instead of fitting them again).
      volumes: how many volumes it was fitted on.
      noisy: with `CalibrationConfig.noise_by_site`, whether the site's volumes
        are noisier than the target's (`site_is_noisy`), so noise-matched; None
        where each volume decides by its own noise.
      landmarks: [L] the site's Nyul landmarks (`baselines.nyul.site_landmarks`)
        measured on the slices `final` was fitted on (noise-matched, divided by
        their fields), for `CalibrationConfig.nyul_weight`; None without a Nyul
        scale.
      field_gains: {volume path: what its field fit lowered the loss by, in
        bits/dim} of the volumes fitted on (`field_gain`); empty without fields.
      field_sizes: {volume path: `field_size` of its fitted field}; empty without.
      refitted: whether `final` was refitted after the fields.
    """

    first: IntensityCurve
    final: IntensityCurve
    fields: dict[str, np.ndarray]
    volumes: int
    noisy: bool | None = None
    landmarks: np.ndarray | None = None
    field_gains: dict[str, float] = field(default_factory=dict)
    field_sizes: dict[str, float] = field(default_factory=dict)
    refitted: bool = True

    def as_dict(self) -> dict:
        landmarks = None if self.landmarks is None else np.asarray(self.landmarks).tolist()
        return {"curve": self.final.as_dict() if self.refitted else None,
                "curve_refitted_after_fields": self.refitted,
                "before_fields": self.first.as_dict(),
                "fitted_on_volumes": self.volumes, "noisier_than_target": self.noisy,
                "nyul_site_landmarks": landmarks, "field_gains_bits_per_dim": self.field_gains,
                "field_log_std": self.field_sizes}


@dataclass(frozen=True)
class SiteLandmarks:
    """A site's Nyul landmarks (`baselines.nyul.site_landmarks`): one map for all of
    its scans (`--method site-nyul`).

    Attributes:
      marks: [L] the mean of the volumes' landmarks (unit intensities).
      volumes: how many volumes they were measured on.
    """

    marks: np.ndarray
    volumes: int

    @classmethod
    def fit(cls, prepared: list[PreparedVolume], reference: TargetReference) -> "SiteLandmarks":
        """From one site's volumes (ValueError without a Nyul scale or volumes)."""
        percentiles = reference.nyul_scale().percentiles
        return cls(site_landmarks([p.slices[p.slice_masks] for p in prepared], percentiles),
                   len(prepared))

    def as_dict(self) -> dict:
        return {"nyul_site_landmarks": np.asarray(self.marks).tolist(),
                "fitted_on_volumes": self.volumes}


def site_is_noisy(prepared: list[PreparedVolume], reference: TargetReference
                  ) -> tuple[bool, float]:
    """(whether one site's scans are noisier than the target's, the median of their
    noise-to-contrast ratios over the target's): noisy above `NOISE_TOLERANCE`. A
    scan's ratio also grows as its subject's tissue contrast falls; the `demo`
    target's own training scans measure 0.88-1.09x their mean, its noisier
    scanners 1.27x and more (docs/methods.md)."""
    target = float(reference.noise_ratio)
    ratios = [noise_contrast_ratio(p.slices, p.slice_masks) / target for p in prepared]
    ratios = [r for r in ratios if np.isfinite(r)]
    median = float(np.median(ratios)) if ratios else float("nan")
    return bool(median > NOISE_TOLERANCE), median


def fit_slices(prepared: PreparedVolume, reference: TargetReference,
               noise_matched: bool) -> tuple[np.ndarray, float]:
    """(the slices the likelihood sees, the smoothing applied in pixels): with
    `noise_matched`, smoothed to the target's noise-to-contrast ratio."""
    if not noise_matched:
        return prepared.slices, 0.0
    return match_noise(prepared.slices, prepared.slice_masks, float(reference.noise_ratio))


def field_frame(prepared: PreparedVolume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(basis [N, 9, H, W] of the slices' pixels, center, half-extents in mm): where a
    volume's field is fitted, in world coordinates over its brain's box."""
    center, half = brain_box(prepared.brain_world_positions())
    basis = field_basis(prepared.world_positions(), center, half)
    return np.moveaxis(basis, -1, 1).astype(np.float32), center, half


def volume_field(calibrator: Calibrator, prepared: PreparedVolume, slices: np.ndarray,
                 curve: IntensityCurve) -> tuple[BiasField, float]:
    """(the volume's multiplicative field under a held `curve` (its fit slices),
    its `field_gain`)."""
    basis, center, half = field_frame(prepared)
    coefficients, history = calibrator.field(slices, prepared.slice_masks, basis, curve,
                                             calibrator.config.field_penalty)
    return BiasField(coefficients, center, half), field_gain(history)


def field_gain(history: np.ndarray) -> float:
    """What a field fit lowered its loss by (bits/dim, the penalty included): the
    loss without a field (the fit's first step) minus the lowest it reached; 0 for
    a fit that gave NaN/Inf. A diagnostic, not a test: on the `demo` validation
    subjects a shift (no field of its own) gains as much as a scanner with one
    (0.0005-0.009 a scan against 0.001-0.015; docs/methods.md)."""
    history = np.asarray(history, np.float64)
    if history.size == 0 or not np.all(np.isfinite(history)):
        return 0.0
    return float(max(history[0] - history.min(), 0.0))


def field_size(prepared: PreparedVolume, field: BiasField) -> float:
    """The std over a volume's brain of its field's log (its size; a constant is the
    curve's): how far the field bends the volume's intensities. A diagnostic: site
    medians order as the `demo` data's field amplitudes, but a site of three scans
    cannot be told from a shift of the target by it (docs/methods.md)."""
    log_field = field.log_field(prepared.brain_world_positions())
    return float(np.std(log_field)) if log_field.size else 0.0


def log_field_of(prepared: PreparedVolume, field: BiasField | None) -> np.ndarray | None:
    return None if field is None else field.log_field(prepared.world_positions()).astype(
        np.float32)


def corrected_landmarks(inputs: list[tuple], reference: TargetReference) -> np.ndarray | None:
    """The Nyul landmarks of volumes' (slices, masks, log field or None) as a curve
    fit sees them (divided by their fields), averaged over the volumes; None if the
    reference has no Nyul scale."""
    try:
        percentiles = reference.nyul_scale().percentiles
    except ValueError:
        return None
    brains = [(x if f is None else x * np.exp(-f))[m] for x, m, f in inputs]
    return site_landmarks(brains, percentiles)


def refit_after_fields(calibrator: Calibrator, first: IntensityCurve, corrected: list[tuple],
                       reference: TargetReference, landmarks: np.ndarray | None
                       ) -> tuple[IntensityCurve, bool]:
    """(the curve of volumes' (slices, masks, log field) corrected by their fields,
    whether it was refitted): the refit is skipped where the transform would weight
    its shape 0 (`nyul_weight` 1 and the site's Nyul `landmarks`), which saves a
    curve fit per site; then `first` on the knots the refit would have had."""
    if calibrator.config.nyul_weight < 1 or landmarks is None:
        return calibrator.shared_curve(corrected, reference)[0], True
    knots = calibrator.shared_knots(corrected)
    values = np.interp(knots, first.knots, first.values)
    return IntensityCurve(knots, values, fitted=first.fitted), False


def fit_site_curve(calibrator: Calibrator, prepared: list[PreparedVolume],
                   reference: TargetReference) -> SiteCurve:
    """One site's curve from its volumes (`CalibrationConfig` says how): the curve of
    the volumes pooled; with fields, each volume's field under it, then the curve
    refitted on the volumes corrected by their fields (`refit_after_fields`). Also
    the site's Nyul landmarks of the same corrected slices."""
    config = calibrator.config
    noisy = site_is_noisy(prepared, reference)[0] if config.noise_by_site else None
    inputs = [(fit_slices(p, reference, config.noise_matched and noisy is not False)[0],
               p.slice_masks) for p in prepared]
    first, _ = calibrator.shared_curve(inputs, reference)
    if config.field_penalty is None:
        return SiteCurve(first, first, {}, len(prepared), noisy,
                         corrected_landmarks([(x, m, None) for x, m in inputs], reference))
    fitted = [volume_field(calibrator, p, x, first) for p, (x, _) in zip(prepared, inputs)]
    fields = [f for f, _ in fitted]
    gains = {p.volume.path: g for p, (_, g) in zip(prepared, fitted)}
    sizes = {p.volume.path: field_size(p, f) for p, f in zip(prepared, fields)}
    corrected = [(x, m, log_field_of(p, f)) for p, (x, m), f in zip(prepared, inputs, fields)]
    landmarks = corrected_landmarks(corrected, reference)
    final, refitted = refit_after_fields(calibrator, first, corrected, reference, landmarks)
    return SiteCurve(first, final, {p.volume.path: f.coefficients
                                    for p, f in zip(prepared, fields)}, len(prepared), noisy,
                     landmarks, gains, sizes, refitted)


def calibrated_transform(calibrator: Calibrator, prepared: PreparedVolume,
                         reference: TargetReference, site: SiteCurve | None = None
                         ) -> tuple[IntensityTransform, dict]:
    """A volume's intensity transform by the likelihood: its site's curve (`site`,
    with its own field fitted under the site's first curve) or, without a site,
    its own curve (and field). Returns (transform, notes for the report)."""
    config = calibrator.config
    matched = config.noise_matched and (site is None or site.noisy is not False)
    slices, smoothing = fit_slices(prepared, reference, matched)
    notes = {"noise_contrast_ratio_target": float(reference.noise_ratio),
             "noise_smoothing_px": smoothing}
    if site is None:
        site = own_curve(calibrator, prepared, slices, reference)
    path = prepared.volume.path
    field, gain, size = None, site.field_gains.get(path), site.field_sizes.get(path)
    if config.field_penalty is not None:
        coefficients = site.fields.get(path)
        if coefficients is None:
            field, gain = volume_field(calibrator, prepared, slices, site.first)
            size = field_size(prepared, field)
        else:
            field = BiasField(coefficients, *field_frame(prepared)[1:])
    notes["fitted"] = site.final.fitted
    if gain is not None:
        notes["field_gain_bits_per_dim"] = gain
    if size is not None:
        notes["field_log_std"] = size
    smoothing_mm = (smoothing * float(config.smooth_output)
                    * float(np.mean(in_plane_mm(prepared.volume.canonical_affine))))
    transform = IntensityTransform(site.final.knots, site.final.values, field=field,
                                   kind="curve", smoothing_mm=smoothing_mm)
    if config.nyul_weight > 0 and site.landmarks is not None:
        site_map = nyul_transform(prepared, reference, SiteLandmarks(site.landmarks, site.volumes),
                                  transform_scale(config, reference, notes))
        transform = averaged(transform, site_map, config.nyul_weight)
        notes["nyul_weight"] = config.nyul_weight
    if config.scan_nyul_weight > 0 or config.scan_nyul_contrast_gain > 0:
        own = corrected_landmarks([(slices, prepared.slice_masks,
                                    log_field_of(prepared, field))], reference)
        if own is not None:
            weight, ratio = scan_map_weight(config, own, site.landmarks, reference,
                                            noise_matched=smoothing > 0)
            if ratio is not None:
                notes["scan_contrast_ratio"] = ratio
            scan_map = nyul_transform(prepared, reference, SiteLandmarks(own, 1),
                                      transform_scale(config, reference, notes))
            transform = averaged(transform, scan_map, weight)
            notes["scan_nyul_weight"] = weight
    return safety_net(calibrator, prepared, slices, transform, reference, notes,
                      config.fallback, config.safety_margin)


def transform_scale(config: CalibrationConfig, reference: TargetReference,
                    notes: dict) -> NyulScale | None:
    """The scale a Nyul map of the transform maps onto (`CalibrationConfig.nyul_scale`);
    None: the standard scale (also for a prior without mean landmarks, which
    `notes` then records)."""
    if config.nyul_scale == "standard":
        return None
    try:
        return reference.mean_landmark_scale()
    except ValueError as error:
        notes["nyul_scale"] = f"standard: {error}"
        return None


def scan_map_weight(config: CalibrationConfig, own: np.ndarray, site_marks: np.ndarray | None,
                    reference: TargetReference, noise_matched: bool
                    ) -> tuple[float, float | None]:
    """(the weight of a scan's own Nyul map, its contrast ratio or None):
    `CalibrationConfig.scan_nyul_weight`, moved by `scan_nyul_contrast_gain` times how
    much flatter the scan (landmarks `own`) is than its site's typical scan; only
    upwards where `scan_nyul_gain_flatter_only` covers the scan ('noisy': the fit
    smoothed it, `noise_matched`)."""
    if config.scan_nyul_contrast_gain == 0 or site_marks is None:
        return config.scan_nyul_weight, None
    ratio = contrast_ratio(own, site_marks, reference.nyul_scale())
    sides = config.scan_nyul_gain_flatter_only
    flatter_only = sides == "all" or (sides == "noisy" and noise_matched)
    flatness = max(1.0 - ratio, 0.0) if flatter_only else 1.0 - ratio
    weight = config.scan_nyul_weight + config.scan_nyul_contrast_gain * flatness
    return float(np.clip(weight, 0.0, 1.0)), ratio


def own_curve(calibrator: Calibrator, prepared: PreparedVolume, slices: np.ndarray,
              reference: TargetReference) -> SiteCurve:
    """A volume's own curve (and field) from its fit `slices`, as a site of one."""
    first, _ = calibrator.curve(slices, prepared.slice_masks, reference)
    path = prepared.volume.path
    if calibrator.config.field_penalty is None:
        return SiteCurve(first, first, {}, 1, landmarks=corrected_landmarks(
            [(slices, prepared.slice_masks, None)], reference))
    field, gain = volume_field(calibrator, prepared, slices, first)
    corrected = [(slices, prepared.slice_masks, log_field_of(prepared, field))]
    landmarks = corrected_landmarks(corrected, reference)
    final, refitted = refit_after_fields(calibrator, first, corrected, reference, landmarks)
    return SiteCurve(first, final, {path: field.coefficients}, 1, landmarks=landmarks,
                     field_gains={path: gain},
                     field_sizes={path: field_size(prepared, field)}, refitted=refitted)


def safety_net(calibrator: Calibrator, prepared: PreparedVolume, slices: np.ndarray,
               transform: IntensityTransform, reference: TargetReference, notes: dict,
               fallback: bool, margin: float = 0.0) -> tuple[IntensityTransform, dict]:
    """Flags (or, with `fallback`, replaces by Nyul's map) a transform that the prior
    scores more than `margin` bits/dim below Nyul's map of the same volume, or whose
    fit did not converge.

    Both are scored by the same change-of-variables likelihood of the volume's (fit)
    `slices`, in bits/dim, recorded in `notes`; a flag goes to notes["flag"], a
    replacement to notes["fallback"]. The margin (`CalibrationConfig.safety_margin`)
    and replacing being off by default have one reason: a volume's own map (Nyul's)
    normalises the subject onto the population, which the prior scores a little
    higher even where the site's map is far closer to the truth (docs/methods.md).
    Without a Nyul scale (an older prior), only the transform's score is noted."""
    masks = prepared.slice_masks
    log_fields = log_field_of(prepared, transform.field)
    ours = calibrator.likelihood(curve_parameters(transform.values), slices, masks,
                                 transform.knots, log_fields)
    notes["bits_per_dim"] = {"transform": ours}
    try:
        nyul = nyul_transform(prepared, reference)
    except ValueError:  # no Nyul scale
        return transform, notes
    theirs = calibrator.likelihood(curve_parameters(nyul.values), slices, masks, nyul.knots)
    notes["bits_per_dim"]["nyul"] = theirs
    reason = ("the intensity curve fit did not converge" if not notes.get("fitted", True)
              else "its score is not finite" if not np.isfinite(ours)
              else f"the prior scores Nyul's map {ours - theirs:.3f} bits/dim higher "
                   f"({theirs:.4f} < {ours:.4f}), beyond the {margin:g} margin"
              if theirs < ours - margin else None)
    if reason is None:
        return transform, notes
    if not fallback:
        notes["flag"] = reason
        return transform, notes
    notes["fallback"] = f"nyul: {reason}"
    return nyul, notes


def transformed_slices(prepared: PreparedVolume, transform: IntensityTransform) -> np.ndarray:
    """[N, H, W] the volume's slices through its transform (smoothing included);
    zero background."""
    world = prepared.world_positions() if transform.field is not None else None
    slices = prepared.slices
    if transform.smoothing_mm > 0:
        pixel_mm = in_plane_mm(prepared.volume.canonical_affine)
        slices = smooth_in_mask(slices, prepared.slice_masks,
                                sigma_in_pixels(transform.smoothing_mm, pixel_mm))
    return np.where(prepared.slice_masks, transform(slices, world), 0.0).astype(np.float32)


def curve_fit_status(done: int, total: int, seconds: float, first: float) -> str:
    """'intensity curve i/n' and, once two fits have finished, the time left at
    the mean pace of the fits after the first (which includes compiling): the
    `done` fits took `seconds`, the first of them `first`."""
    status = f"intensity curve {done + 1}/{total}"
    if done < 2:
        return status
    left = (seconds - first) / (done - 1) * (total - done)
    return status + (f", about {left / 60:.0f} min left" if left >= 90
                     else f", about {left:.0f} s left")


def shared_curve(harmonizer: Harmonizer, prepared: list[PreparedVolume],
                 reference: TargetReference) -> SiteCurve:
    """One site's curve for all of `prepared` (the harmonizer's init must be
    'calibrated')."""
    return fit_site_curve(harmonizer.calibrator, prepared, reference)


def initial_images(prepared: PreparedVolume, reference: TargetReference, init: str,
                   calibrator: Calibrator | None = None, site: SiteCurve | None = None
                   ) -> tuple[np.ndarray, IntensityTransform | None, dict]:
    """(x_init [N, H, W], the calibrated transform or None, notes) for the solver:
    'calibrated' (the site's curve if given, else the volume's own: needs
    `calibrator`), 'hm', 'template' or 'source'."""
    slices, masks = prepared.slices, prepared.slice_masks
    if init == "calibrated":
        if calibrator is None:
            raise ValueError("init 'calibrated' needs a Calibrator")
        transform, notes = calibrated_transform(calibrator, prepared, reference, site)
        return transformed_slices(prepared, transform), transform, notes
    if init == "hm":
        return histogram_match(slices, masks, reference), None, {}
    if init == "template":
        return np.broadcast_to(reference.mean_slice, slices.shape) * masks, None, {}
    return slices, None, {}


def harmonize_volumes(harmonizer: Harmonizer, prepared: list[PreparedVolume],
                      reference: TargetReference, progress=None,
                      weights: Weights | None = None, site: SiteCurve | None = None
                      ) -> list[HarmonizedVolume]:
    """Harmonizes several volumes with BlindHarmony, their slices packed together.

    Args:
      harmonizer: the compiled engine.
      prepared: volumes from `bh_jax.preprocess.prepare_volume`; with
        `calibration.shared`, the volumes of ONE site (scanner and protocol).
      reference: target statistics.
      progress: optional tqdm-like bar, advanced by slices.
      weights: b1, b2, alpha (default: the harmonizer's settings); changing
        them does not recompile.
      site: init 'calibrated': the site's curve for every volume (e.g. a whole
        run's, `shared_curve`). Default: with `calibration.shared`, one fitted
        on `prepared` together; else one curve per volume.
    """
    if not prepared:
        return []
    settings = harmonizer.settings
    calibrated = settings.init == "calibrated"
    if site is None and calibrated and settings.calibration.shared:
        site = shared_curve(harmonizer, prepared, reference)
    sources = np.concatenate([p.slices for p in prepared])
    brains = np.concatenate([p.slice_masks for p in prepared])
    # Curve fits (seconds each on a 2-core CPU, the first also compiles) come
    # before the first batch: say so, with the time left, rather than sit at 0 %.
    report = calibrated and hasattr(progress, "set_postfix_str")
    starts, began, first = [], time.perf_counter(), 0.0
    for i, p in enumerate(prepared):
        if report:
            progress.set_postfix_str(curve_fit_status(i, len(prepared),
                                                      time.perf_counter() - began, first))
        starts.append(initial_images(p, reference, settings.init, harmonizer.calibrator, site))
        if i == 0:
            first = time.perf_counter() - began
    if report:
        progress.set_postfix_str("")
    inits = np.concatenate([x_init for x_init, _, _ in starts])
    on_batch = progress.update if progress is not None else None
    slices, diagnostics = harmonizer.harmonize_slices(sources, brains, inits, on_batch, weights)
    results, start = [], 0
    for p, (_, transform, notes) in zip(prepared, starts):
        stop = start + len(p.slices)
        out = slices[start:stop]
        if settings.solver != "curve" or transform is None:  # the solver moved the pixels
            transform = fit_transform(p.slices, out, p.slice_masks, p.world_positions())
        results.append(HarmonizedVolume(p, out, {k: v[start:stop]
                                                 for k, v in diagnostics.items()},
                                        transform, notes))
        start = stop
    return results


def harmonize_volume(harmonizer: Harmonizer, prepared: PreparedVolume,
                     reference: TargetReference, weights: Weights | None = None
                     ) -> HarmonizedVolume:
    """Harmonizes one volume with BlindHarmony (`weights` as `harmonize_volumes`)."""
    return harmonize_volumes(harmonizer, [prepared], reference, weights=weights)[0]


def hm_transform(prepared: PreparedVolume, reference: TargetReference) -> IntensityTransform:
    """HM as a transform: the volume's in-brain quantiles -> the target's."""
    values = prepared.slices[prepared.slice_masks]
    levels = np.linspace(0.0, 1.0, len(reference.quantiles))
    return IntensityTransform(*monotone_knots(np.quantile(values, levels), reference.quantiles),
                              kind="hm")


def nyul_transform(prepared: PreparedVolume, reference: TargetReference,
                   site: SiteLandmarks | None = None, scale: NyulScale | None = None
                   ) -> IntensityTransform:
    """Nyul as a transform: the volume's landmarks (or its `site`'s) -> the standard
    scale (or `scale`, at the same percentiles)."""
    scale = scale or reference.nyul_scale()
    marks = (landmarks(prepared.slices[prepared.slice_masks], scale.percentiles)
             if site is None else site.marks)
    return IntensityTransform(*monotone_knots(marks, scale.intensities), extrapolate=True,
                              kind="nyul" if site is None else "site-nyul")


def site_nyul(prepared: list[PreparedVolume], reference: TargetReference,
              site: SiteLandmarks | None = None) -> list[HarmonizedVolume]:
    """Nyul per site: one site's volumes through one map, from `site`'s landmarks
    (default: fitted on `prepared`)."""
    site = site or SiteLandmarks.fit(prepared, reference)
    return [classical("site-nyul", p, reference, site) for p in prepared]


def classical(method: str, prepared: PreparedVolume, reference: TargetReference,
              site: SiteLandmarks | None = None) -> HarmonizedVolume:
    """HM, Nyul, site Nyul or SSIMH of one volume (no per-slice diagnostics).
    'site-nyul' maps with its `site`'s landmarks (without one: the volume's own,
    Nyul's map)."""
    masks = prepared.slice_masks
    if method == "hm":
        slices, transform = (histogram_match(prepared.slices, masks, reference),
                             hm_transform(prepared, reference))
    elif method in ("nyul", "site-nyul"):
        site = site if method == "site-nyul" else None
        slices = reference.nyul_scale()(prepared.slices, masks,
                                        None if site is None else site.marks)
        transform = nyul_transform(prepared, reference, site)
    elif method == "ssimh":
        slices = spectrum_swap(prepared.slices, masks, reference)
        transform = fit_transform(prepared.slices, slices, masks, prepared.world_positions())
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return HarmonizedVolume(prepared, slices, {}, transform)
