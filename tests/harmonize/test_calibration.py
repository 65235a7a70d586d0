"""Intensity calibration: the change-of-variables likelihood, the curve fit, one compile."""

import math
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bh_jax.harmonize import Harmonizer, SolverConfig, harmonize_volumes
from bh_jax.harmonize.calibration import (
    Calibrator,
    IntensityCurve,
    curve_parameters,
    curve_values,
    negative_log_likelihood,
    source_knots,
)
from bh_jax.harmonize.pipeline import (
    SiteCurve,
    classical,
    curve_fit_status,
    field_frame,
    field_gain,
    field_size,
    safety_net,
    scan_map_weight,
    shared_curve,
    site_is_noisy,
    transformed_slices,
)
from bh_jax.harmonize.settings import CalibrationConfig
from bh_jax.harmonize.transform import BiasField, IntensityTransform
from bh_jax.preprocess import (
    in_plane_mm,
    noise_contrast_ratio,
    smooth_in_mask,
    smooth_volume_in_plane,
    window_slices,
)


class _Bar:
    """Stands in for tqdm: records the status lines and counts the slices."""

    def __init__(self):
        self.postfixes, self.slices = [], 0

    def set_postfix_str(self, text):
        self.postfixes.append(text)

    def update(self, n):
        self.slices += n


def test_curve_parameters_round_trip_and_increase():
    values = np.array([0.1, 0.2, 0.5, 0.55, 0.9])
    np.testing.assert_allclose(curve_values(jnp.asarray(curve_parameters(values))), values,
                               atol=1e-6)
    theta = jnp.asarray(np.random.default_rng(0).normal(size=6) * 5, jnp.float32)
    assert np.all(np.diff(np.asarray(curve_values(theta))) > 0)


def test_curve_maps_knots_to_values_and_keeps_background_zero():
    curve = IntensityCurve(np.array([0.2, 0.4, 0.8]), np.array([0.1, 0.5, 0.7]))
    x = np.array([[0.2, 0.3, 0.6], [0.8, 0.5, 0.0]], np.float32)
    mask = np.array([[True, True, True], [True, True, False]])
    np.testing.assert_allclose(curve(x, mask), [[0.1, 0.3, 0.6], [0.7, 0.55, 0.0]], atol=1e-6)


def test_knots_reject_empty_and_constant_brains():
    with pytest.raises(ValueError, match="mask is empty"):
        source_knots(np.ones((2, 4, 4)), np.zeros((2, 4, 4), bool), 4)
    with pytest.raises(ValueError, match="constant"):
        source_knots(np.full((2, 4, 4), 0.3), np.ones((2, 4, 4), bool), 4)
    # Many equal voxels: repeated quantiles are pulled apart, never zero-width.
    x = np.concatenate([np.full(90, 0.5), np.linspace(0.6, 0.9, 10)]).reshape(1, 10, 10)
    assert np.all(np.diff(source_knots(x, np.ones_like(x, bool), 4)) > 0)


@pytest.mark.parametrize("with_field", [False, True])
def test_log_likelihood_includes_the_maps_log_det(flow, with_field):
    """The score equals -log p(T(x / f)) - log|det d/dx T(x / f)| with the Jacobian
    from jax.jacfwd, for a curve T alone and after a multiplicative field f."""
    model, params = flow.model, flow.params
    rng = np.random.default_rng(1)
    sources = rng.uniform(0.1, 0.9, (2, model.height, model.width)).astype(np.float32)
    brains = np.zeros_like(sources, bool)
    brains[:, 8:24, 10:22] = True
    log_fields = (rng.uniform(-0.2, 0.2, sources.shape).astype(np.float32) if with_field
                  else np.zeros_like(sources))
    # Knots over the divided voxels: jnp.interp is flat outside them, the curve is not.
    knots = jnp.asarray(source_knots(sources * np.exp(-log_fields), brains, 3), jnp.float32)
    theta = jnp.asarray(curve_parameters(np.array([0.05, 0.3, 0.45, 0.95])))
    values = curve_values(theta)

    expected = []
    for s, b, f in zip(sources, brains, log_fields):
        def mapped_brain(v, f=jnp.asarray(f[b])):  # an independent piecewise map of the voxels
            return jnp.interp(v * jnp.exp(-f), knots, values)

        inside = jnp.asarray(s[b])
        _, log_det = jnp.linalg.slogdet(jax.jacfwd(mapped_brain)(inside))
        image = jnp.zeros_like(jnp.asarray(s)).at[b].set(mapped_brain(inside))
        log_p = model.log_prob(params, image[None, ..., None])[0]
        expected.append(-(log_p + log_det) / (model.latent_size * math.log(2.0)))
    got = negative_log_likelihood(model, params, theta, jnp.asarray(sources),
                                  jnp.asarray(brains), knots,
                                  jnp.asarray(log_fields) if with_field else None)
    np.testing.assert_allclose(got, np.mean(expected), rtol=1e-5)


def test_flattening_is_penalised_by_the_log_det(flow, volumes):
    """Without the log-det a flatter image scores better; with it, the score rises."""
    model, params = flow.model, flow.params
    volume = volumes[0]
    sources, brains = jnp.asarray(volume.slices), jnp.asarray(volume.slice_masks)
    knots = jnp.asarray(source_knots(volume.slices, volume.slice_masks, 1), jnp.float32)
    mid = float(np.mean(volume.slices[volume.slice_masks]))

    def score(scale):  # an affine curve through (mid, mid) with slope `scale`
        values = mid + scale * (np.asarray(knots) - mid)
        return float(negative_log_likelihood(model, params, jnp.asarray(curve_parameters(values)),
                                             sources, brains, knots))

    assert score(1e-3) > score(1.0) + 1.0  # log2(1000) bits per brain voxel, diluted


def test_calibrator_lowers_the_loss_and_compiles_once(flow, volumes):
    calibrator = Calibrator(flow.model, flow.params, CalibrationConfig(steps=2, pool=8),
                            devices=jax.devices()[:1])
    for volume in volumes[:2]:
        curve, history = calibrator.curve(volume.slices, volume.slice_masks, flow.reference)
        assert curve.fitted and history.shape == (2,)
        assert history[-1] < history[0]
        assert np.all(np.diff(curve.values) > 0)
        out = curve(volume.slices, volume.slice_masks)
        assert out.shape == volume.slices.shape and not out[~volume.slice_masks].any()
    assert calibrator.compilations == 1, "a second volume recompiled the fit"


def test_curve_solver_returns_the_calibrated_volume(flow, volumes):
    settings = SolverConfig(solver="curve", init="calibrated",
                            calibration=CalibrationConfig(steps=2, pool=8, field_penalty=None,
                                                          shared=False, fallback=False,
                                                          nyul_weight=0.0,
                                                          scan_nyul_weight=0.0,
                                                          scan_nyul_contrast_gain=0.0))
    # On the 8 simulated devices (1 device against 8: the sharded-fit tests below).
    for devices in (jax.devices(),):
        harmonizer = Harmonizer(flow.model, flow.params, settings, batch_size=8, devices=devices)
        bar = _Bar()
        batch = volumes[:2] + volumes[:1]  # three fits (the tiny set has two test subjects)
        results = harmonize_volumes(harmonizer, batch, flow.reference, progress=bar)
        assert harmonizer.calibrator.compilations == 1
        # The bar says which fit is running and, once two are done (the first
        # compiles), the time left.
        assert bar.postfixes[:2] == ["intensity curve 1/3", "intensity curve 2/3"]
        assert bar.postfixes[2].startswith("intensity curve 3/3, about ")
        assert bar.postfixes[-1] == ""
        assert bar.slices == sum(len(v.slices) for v in batch)
        for result, volume in zip(results, batch):
            assert result.exact_transform and result.notes["fitted"]
            assert result.transform.field is None and len(result.transform.knots) == 5
            np.testing.assert_allclose(result.slices, transformed_slices(volume, result.transform),
                                       atol=1e-6)
            d = result.diagnostics
            np.testing.assert_allclose(d["loss_end"], d["loss_start"])
            # A monotone map keeps most of the correlation with the source.
            assert np.median(d["ncc_end"]) > 0.9 and not d["failed"].any()


def test_a_field_is_fitted_per_volume_and_the_curve_refitted(flow, volumes):
    """With a field: one more compiled program; each volume's field is fitted under the
    held curve (its loss falls), a larger penalty gives smaller coefficients, and the
    result is the refitted curve after the volume's field."""
    config = CalibrationConfig(steps=2, pool=8, field_steps=2, field_penalty=0.0,
                               fallback=False, smooth_output=False)
    calibrator = Calibrator(flow.model, flow.params, config, devices=jax.devices()[:1])
    volume = volumes[0]
    curve, _ = calibrator.curve(volume.slices, volume.slice_masks, flow.reference)
    basis, _, _ = field_frame(volume)
    assert basis.shape == (len(volume.slices), 9, *volume.slices.shape[1:])
    free, history = calibrator.field(volume.slices, volume.slice_masks, basis, curve, 0.0)
    assert history[-1] < history[0] and np.abs(free).max() > 0
    shrunk, _ = calibrator.field(volume.slices, volume.slice_masks, basis, curve, 100.0)
    assert np.linalg.norm(shrunk) < np.linalg.norm(free)
    assert calibrator.compilations == 2  # the curve fit and the field fit, once each

    harmonizer = Harmonizer(flow.model, flow.params, SolverConfig(
        solver="curve", init="calibrated", calibration=config), batch_size=8,
        devices=jax.devices()[:1])
    result = harmonize_volumes(harmonizer, [volume], flow.reference)[0]
    field = result.transform.field
    assert field is not None and field.coefficients.shape == (9,)
    expected = transformed_slices(volume, result.transform)
    log_field = field.log_field(volume.world_positions())
    corrected = volume.slices * np.exp(-log_field)
    np.testing.assert_allclose(expected, np.where(volume.slice_masks, np.clip(np.interp(
        corrected, result.transform.knots, result.transform.values), 0, 1), 0), atol=1e-5)
    np.testing.assert_allclose(result.slices, expected, atol=1e-6)


def test_shared_curve_is_one_fit_on_the_volumes_together(flow, volumes):
    config = CalibrationConfig(steps=2, pool=8, field_penalty=None, noise_matched=False,
                               fallback=False, nyul_weight=0.0, scan_nyul_weight=0.0,
                               scan_nyul_contrast_gain=0.0)
    calibrator = Calibrator(flow.model, flow.params, config, devices=jax.devices()[:1])
    shared, _ = calibrator.shared_curve([(v.slices, v.slice_masks) for v in volumes],
                                        flow.reference)
    stacked, _ = calibrator.curve(np.concatenate([v.slices for v in volumes]),
                                  np.concatenate([v.slice_masks for v in volumes]),
                                  flow.reference)
    np.testing.assert_array_equal(shared.knots, stacked.knots)
    np.testing.assert_array_equal(shared.values, stacked.values)
    # The knots are the pooled quantiles, not any one volume's.
    pooled = np.concatenate([v.slices[v.slice_masks] for v in volumes])
    np.testing.assert_allclose(shared.knots, np.quantile(pooled, np.linspace(0, 1, 5)),
                               atol=1e-6)
    with pytest.raises(ValueError, match="at least one volume"):
        calibrator.shared_curve([], flow.reference)

    settings = SolverConfig(solver="curve", init="calibrated", calibration=config)
    harmonizer = Harmonizer(flow.model, flow.params, settings, batch_size=8,
                            devices=jax.devices()[:1])
    results = harmonize_volumes(harmonizer, volumes, flow.reference)
    for result, volume in zip(results, volumes):
        np.testing.assert_array_equal(result.transform.values, shared.values)
        np.testing.assert_allclose(result.slices, shared(volume.slices, volume.slice_masks),
                                   atol=1e-6)
    # A given site curve is used as it is (a run's, fitted once).
    given = IntensityCurve(np.array([0.0, 1.0]), np.array([0.1, 0.9]))
    results = harmonize_volumes(harmonizer, volumes[:1], flow.reference,
                                site=SiteCurve(given, given, {}, 1))
    np.testing.assert_array_equal(results[0].transform.values, given.values)
    assert harmonizer.calibrator.compilations == 1


def test_field_gain_is_the_loss_without_a_field_minus_the_lowest():
    assert field_gain(np.array([4.25, 4.0, 4.125, 4.0625])) == 0.25
    assert field_gain(np.array([4.0, 4.5])) == 0.0  # a fit that only rose gained nothing
    assert field_gain(np.array([4.0, np.nan])) == 0.0
    assert field_gain(np.array([])) == 0.0


@pytest.mark.parametrize("shared", [True, False])
def test_each_volumes_field_gain_and_size_are_reported(flow, volumes, shared):
    """With fields, each volume's notes say what its field fit gained (as the site's
    fit records it) and how large the field is; without, they say nothing."""
    def run(**fields):
        config = CalibrationConfig(steps=2, pool=8, field_steps=2, fallback=False,
                                   shared=shared, **fields)
        harmonizer = Harmonizer(flow.model, flow.params, SolverConfig(
            solver="curve", init="calibrated", calibration=config), batch_size=8,
            devices=jax.devices()[:1])
        return harmonize_volumes(harmonizer, volumes[:2], flow.reference)

    for fitted, plain in zip(run(), run(field_penalty=None), strict=True):
        assert fitted.transform.field is not None and plain.transform.field is None
        gain = fitted.notes["field_gain_bits_per_dim"]
        assert np.isfinite(gain) and gain >= 0
        assert fitted.notes["field_log_std"] == pytest.approx(
            field_size(fitted.prepared, fitted.transform.field))
        assert "field_gain_bits_per_dim" not in plain.notes
        assert "field_log_std" not in plain.notes


def test_field_size_is_the_log_field_std_over_the_brain(volumes):
    volume = volumes[0]
    world = volume.brain_world_positions().astype(np.float64)
    low, high = world.min(axis=0), world.max(axis=0)
    x = (world[:, 0] - (low[0] + high[0]) / 2) / ((high[0] - low[0]) / 2)
    coefficients = np.zeros(9)
    coefficients[0], coefficients[3] = 0.2, -0.1  # 0.2 x - 0.1 x^2
    frame = field_frame(volume)[1:]
    np.testing.assert_allclose(field_size(volume, BiasField(coefficients, *frame)),
                               np.std(0.2 * x - 0.1 * x * x), rtol=1e-6)
    assert field_size(volume, BiasField(np.zeros(9), *frame)) == 0.0


def test_safety_net_falls_back_to_nyul_where_the_prior_prefers_it(flow, volumes):
    """A flattened site curve explains a volume worse than Nyul's map, by more than the
    margin: the volume gets Nyul's map and the notes say why; its own fitted curve is
    kept, with both scores."""
    config = CalibrationConfig(steps=2, pool=8, field_penalty=None, fallback=True)
    harmonizer = Harmonizer(flow.model, flow.params, SolverConfig(calibration=config),
                            batch_size=8, devices=jax.devices()[:1])
    volume = volumes[0]
    flat = IntensityCurve(np.array([0.0, 1.0]), np.array([0.50, 0.501]))
    site = SiteCurve(flat, flat, {}, 1)
    # The default only flags it: the site's curve is kept.
    flat_transform = IntensityTransform(flat.knots, flat.values)
    kept, notes = safety_net(harmonizer.calibrator, volume, volume.slices, flat_transform,
                             flow.reference, {}, fallback=False)
    assert kept is flat_transform and "fallback" not in notes
    assert notes["flag"].startswith("the prior scores Nyul's map ")
    # Flagged exactly where Nyul's map scores more than the margin above it.
    bits = notes["bits_per_dim"]
    gap = bits["transform"] - bits["nyul"]
    assert gap > 0
    for margin, flagged in ((0.99 * gap, True), (1.01 * gap, False)):
        _, notes = safety_net(harmonizer.calibrator, volume, volume.slices, flat_transform,
                              flow.reference, {}, fallback=False, margin=margin)
        assert ("flag" in notes) == flagged and notes["bits_per_dim"] == bits
    fell = harmonize_volumes(harmonizer, [volume], flow.reference, site=site)[0]
    assert fell.transform.kind == "nyul" and fell.notes["fallback"].startswith("nyul: ")
    scores = fell.notes["bits_per_dim"]
    assert scores["nyul"] < scores["transform"]
    np.testing.assert_allclose(fell.slices, classical("nyul", volume, flow.reference).slices,
                               atol=1e-5)
    # The volume's own fit: kept exactly when the prior scores it at least as high.
    own = harmonize_volumes(harmonizer, [volume], flow.reference)[0]
    scores = own.notes["bits_per_dim"]
    assert ("fallback" in own.notes) == (scores["nyul"] < scores["transform"]
                                         - config.safety_margin)
    assert own.transform.kind == ("nyul" if "fallback" in own.notes else "curve")
    assert harmonizer.calibrator.compilations == 1  # scoring compiles no fit


def _calibrators(flow, config):
    """The same calibration on one device and on all 8 simulated ones."""
    return [Calibrator(flow.model, flow.params, config, devices=devices)
            for devices in (jax.devices()[:1], jax.devices())]


def test_sharded_likelihood_equals_the_one_device_likelihood(flow, volumes):
    """The property the fit relies on, at fixed curve parameters: the same value
    and gradient whether the pool is split over 8 devices or not."""
    volume = volumes[0]
    knots = source_knots(volume.slices, volume.slice_masks, 4)
    rng = np.random.default_rng(0)
    one, many = _calibrators(flow, CalibrationConfig(pool=8))
    for values in (knots, np.sort(rng.uniform(0.0, 1.0, 5))):
        theta = curve_parameters(values)
        value_1, grad_1 = one.likelihood(theta, volume.slices, volume.slice_masks, knots,
                                         gradient=True)
        value_8, grad_8 = many.likelihood(theta, volume.slices, volume.slice_masks, knots,
                                          gradient=True)
        assert value_8 == pytest.approx(value_1, rel=1e-6)
        scored = many.likelihood(theta, volume.slices, volume.slice_masks, knots)
        assert scored == pytest.approx(value_8, rel=1e-6)  # the value-only program agrees
        np.testing.assert_allclose(grad_8, grad_1, rtol=1e-4, atol=1e-6)
        assert np.abs(grad_1).max() > 1e-4  # not a stationary point: the gradient says something


def test_sharded_fit_lowers_the_loss_as_much_as_the_one_device_fit(flow, volumes):
    """Judged by the loss, not the curve: along the likelihood's flat directions
    the end point of L-BFGS depends on float rounding, which differs between
    processors and between device counts."""
    volume = volumes[0]
    fits = [c.curve(volume.slices, volume.slice_masks, flow.reference)
            for c in _calibrators(flow, CalibrationConfig(steps=2, pool=8))]
    (one, one_history), (many, many_history) = fits
    assert one_history[0] == pytest.approx(many_history[0], rel=1e-6)  # the same start
    gained = one_history[0] - one_history[-1]
    assert gained > 0 and many_history[-1] < many_history[0]
    assert abs(many_history[-1] - one_history[-1]) <= 0.05 * gained
    assert one.fitted and many.fitted


def test_cli_settings_keep_the_calibration_config():
    from bh_jax.cli import harmonize

    args = harmonize.parse_args(["x.nii.gz", "--checkpoint", "c", "--output-dir", "o",
                                 "--solver", "curve"])
    settings = harmonize.solver_settings(args)
    assert settings.init == "calibrated" and isinstance(settings.calibration, CalibrationConfig)
    args = harmonize.parse_args(["x.nii.gz", "--checkpoint", "c", "--output-dir", "o",
                                 "--solver", "latent", "--init", "calibrated", "--steps", "3"])
    settings = harmonize.solver_settings(args)
    assert (settings.solver, settings.init, settings.steps) == ("latent", "calibrated", 3)
    args = harmonize.parse_args(["x.nii.gz", "--checkpoint", "c", "--output-dir", "o",
                                 "--solver", "curve", "--calibration-steps", "40",
                                 "--calibration-pool", "8"])
    calibration = harmonize.solver_settings(args).calibration
    assert (calibration.steps, calibration.pool) == (40, 8)
    assert calibration.nyul_weight == CalibrationConfig().nyul_weight
    args = harmonize.parse_args(["x.nii.gz", "--checkpoint", "c", "--output-dir", "o",
                                 "--nyul-weight", "0.25", "--scan-nyul-weight", "0.5",
                                 "--scan-nyul-contrast-gain", "3",
                                 "--scan-nyul-gain-flatter-only", "none",
                                 "--nyul-scale", "standard"])
    given = harmonize.solver_settings(args).calibration
    assert (given.nyul_weight, given.scan_nyul_weight, given.scan_nyul_contrast_gain,
            given.scan_nyul_gain_flatter_only, given.nyul_scale) == (0.25, 0.5, 3.0, "none",
                                                                     "standard")
    assert calibration.nyul_scale == CalibrationConfig().nyul_scale
    assert (calibration.scan_nyul_gain_flatter_only
            == CalibrationConfig().scan_nyul_gain_flatter_only)
    assert calibration.scan_nyul_contrast_gain == CalibrationConfig().scan_nyul_contrast_gain
    assert calibration.scan_nyul_weight == CalibrationConfig().scan_nyul_weight
    for bad in (["--nyul-weight", "1.5"], ["--scan-nyul-contrast-gain", "-1"],
                ["--scan-nyul-gain-flatter-only", "yes"], ["--nyul-scale", "median"]):
        with pytest.raises(SystemExit):
            harmonize.parse_args(["x.nii.gz", "--checkpoint", "c", "--output-dir", "o", *bad])
    assert calibration.segments == CalibrationConfig().segments
    args = harmonize.parse_args(["x.nii.gz", "--checkpoint", "c", "--output-dir", "o",
                                 "--solver", "latent", "--calibration-steps", "40"])
    # (latent starts from HM)
    with pytest.raises(ValueError, match="init 'calibrated' only, not 'hm'"):
        harmonize.solver_settings(args)
    # One curve per site unless --sites each (a run groups the sites, the settings say
    # whether the volumes harmonized together share one).
    for flags, shared in ((["--sites", "each"], False), ([], True), (["--sites", "one"], True),
                          (["--shared-curve"], True)):
        args = harmonize.parse_args(["x.nii.gz", "--checkpoint", "c", "--output-dir", "o",
                                     "--solver", "curve", *flags])
        assert harmonize.solver_settings(args).calibration.shared == shared, flags
    with pytest.raises(SystemExit):
        harmonize.parse_args(["x.nii.gz", "--checkpoint", "c", "--output-dir", "o",
                              "--sites", "nowhere.tsv"])
    # The demo: one curve per site unless another solver is asked for.
    assert harmonize.solver_settings(harmonize.parse_args(["--demo"])).calibration.shared


def test_calibration_config_is_checked():
    with pytest.raises(ValueError, match="segments"):
        CalibrationConfig(segments=0)
    with pytest.raises(ValueError, match="init must be one of"):
        SolverConfig(init="median")


def test_curve_fit_status_gives_the_time_left():
    assert curve_fit_status(0, 15, 0.0, 0.0) == "intensity curve 1/15"
    # One fit done: its time includes compiling, so no estimate yet.
    assert curve_fit_status(1, 15, 60.0, 60.0) == "intensity curve 2/15"
    # The pace of the fits after the first: (420 - 200) s / 1 fit, 13 left.
    assert curve_fit_status(2, 15, 420.0, 200.0) == "intensity curve 3/15, about 48 min left"
    assert curve_fit_status(3, 4, 30.0, 20.0) == "intensity curve 4/4, about 5 s left"


def test_a_noisy_volume_is_mapped_smoothed_to_the_target_noise(flow, volumes):
    """With `smooth_output` 1, a volume noisier than the target comes out smoothed by the
    same amount as the copy its curve was fitted on (its noise ratio near the
    target's); with 0, only the fit sees the smoothed copy. The same transform on
    the volume's own voxels (what `run.native_output` does) gives the same slices."""
    volume = volumes[0]
    rng = np.random.default_rng(0)
    noisy = replace(volume, slices=np.clip(volume.slices + rng.normal(
        0, 0.06, volume.slices.shape), 0, 1).astype(np.float32) * volume.slice_masks)
    results = {}
    for smooth in (1.0, 0.0, 0.5):
        config = CalibrationConfig(steps=2, pool=8, field_penalty=None, shared=False,
                                   fallback=False, smooth_output=smooth)
        harmonizer = Harmonizer(flow.model, flow.params, SolverConfig(
            solver="curve", init="calibrated", calibration=config), batch_size=8,
            devices=jax.devices()[:1])
        results[smooth] = harmonize_volumes(harmonizer, [noisy], flow.reference)[0]
    pixel_mm = float(np.mean(in_plane_mm(volume.volume.canonical_affine)))
    smoothed, kept, half = results[1.0], results[0.0], results[0.5]
    assert kept.transform.smoothing_mm == 0.0
    assert smoothed.notes["noise_smoothing_px"] > 0
    assert smoothed.transform.smoothing_mm == pytest.approx(
        smoothed.notes["noise_smoothing_px"] * pixel_mm)
    # A fraction scales the output's sigma, not the fit's.
    assert half.notes["noise_smoothing_px"] == pytest.approx(smoothed.notes["noise_smoothing_px"])
    assert half.transform.smoothing_mm == pytest.approx(smoothed.transform.smoothing_mm / 2)
    np.testing.assert_allclose(smoothed.slices, transformed_slices(noisy, smoothed.transform),
                               atol=1e-6)
    masks = volume.slice_masks
    target = float(flow.reference.noise_ratio)
    ratio = noise_contrast_ratio(smoothed.slices, masks)
    assert ratio < 0.8 * noise_contrast_ratio(kept.slices, masks)
    assert abs(ratio - target) < 0.25 * target

    # On the volume's own grid: smooth the canonical volume, then map every voxel.
    transform = replace(smoothed.transform, kind="curve")
    unit = volume.scale.normalize(volume.volume.data) * volume.mask
    native = smooth_volume_in_plane(unit, volume.mask, transform.smoothing_mm,
                                    in_plane_mm(volume.volume.canonical_affine))
    on_voxels = window_slices(volume, np.where(volume.mask, transform(native), 0.0))
    # Away from the slice window's edge, where the tiny brain is cut and the
    # slices' smoothing misses the neighbours beyond it.
    inner = (slice(None), slice(4, -4), slice(4, -4))
    np.testing.assert_allclose(on_voxels[inner], transformed_slices(volume, transform)[inner],
                               atol=1e-5)


def test_noise_by_site_leaves_a_clean_sites_noisy_scan_unsmoothed(flow, volumes):
    """`noise_by_site`: a site is noise-matched when the median of its scans'
    noise-to-contrast ratios is above the target's (with the tolerance), so one noisy
    scan among clean ones is mapped unsmoothed, and smoothed in a noisy site; by
    default (per scan) it is smoothed in both."""
    rng = np.random.default_rng(0)

    def noisier(volume, level):
        noise = rng.normal(0, level, volume.slices.shape)
        return replace(volume, slices=(np.clip(volume.slices + noise, 0, 1) *
                                       volume.slice_masks).astype(np.float32))

    target = float(flow.reference.noise_ratio)
    # The tiny test scans measure 1.08x and 1.12x the target's ratio themselves: a
    # clean site's scans are made from them by a light smoothing.
    clean = [replace(v, slices=smooth_in_mask(v.slices, v.slice_masks, 0.7)) for v in volumes]
    noisy = [noisier(v, 0.06) for v in volumes]

    def ratios(site):
        return [noise_contrast_ratio(v.slices, v.slice_masks) / target for v in site]

    assert max(ratios(clean)) < 1.05 < min(ratios(noisy)), ratios(clean + noisy)
    mixed = [noisy[0], *clean]  # one noisy scan in a clean site
    is_noisy, median = site_is_noisy(mixed, flow.reference)
    assert not is_noisy and median == pytest.approx(np.median(ratios(mixed)), rel=1e-6)
    assert site_is_noisy(noisy, flow.reference)[0]

    for by_site in (True, False):
        config = CalibrationConfig(steps=2, pool=8, field_penalty=None, fallback=False,
                                   noise_by_site=by_site)
        harmonizer = Harmonizer(flow.model, flow.params, SolverConfig(
            solver="curve", init="calibrated", calibration=config), batch_size=8,
            devices=jax.devices()[:1])
        for site_volumes, noisy_site in ((mixed, False), (noisy, True)):
            site = shared_curve(harmonizer, site_volumes, flow.reference)
            assert site.noisy is (noisy_site if by_site else None)
            result = harmonize_volumes(harmonizer, site_volumes[:1], flow.reference,
                                       site=site)[0]
            smoothed = noisy_site or not by_site
            assert (result.notes["noise_smoothing_px"] > 0) is smoothed
            assert (result.transform.smoothing_mm > 0) is smoothed


def test_nyul_weight_averages_the_sites_curve_with_its_nyul_map(flow, volumes):
    """`nyul_weight` w: one site fit, then (1 - w) * its curve + w * its Nyul map of the
    same field-corrected slices; the output at w = 0.5 is the mean of those at 0 and 1,
    and at 1 it is Nyul's piecewise-linear map from the site's corrected landmarks."""
    from bh_jax.baselines.nyul import PERCENTILES, piecewise_linear

    outputs, site = {}, None
    for weight in (0.0, 0.5, 1.0):
        config = CalibrationConfig(steps=2, pool=8, field_steps=2, fallback=False,
                                   noise_matched=False, nyul_weight=weight,
                                   scan_nyul_weight=0.0, scan_nyul_contrast_gain=0.0)
        harmonizer = Harmonizer(flow.model, flow.params, SolverConfig(calibration=config),
                                batch_size=8, devices=jax.devices()[:1])
        site = site or shared_curve(harmonizer, volumes, flow.reference)
        outputs[weight] = harmonize_volumes(harmonizer, volumes, flow.reference, site=site)
    # The landmarks: each volume's percentiles after dividing by its field, averaged.
    corrected = []
    for volume in volumes:
        field = outputs[0.0][len(corrected)].transform.field
        log_field = field.log_field(volume.world_positions())
        corrected.append((volume.slices * np.exp(-log_field))[volume.slice_masks])
    expected = np.mean([np.percentile(c, PERCENTILES) for c in corrected], axis=0)
    np.testing.assert_allclose(site.landmarks, expected, rtol=1e-5)
    assert site.as_dict()["nyul_site_landmarks"] == pytest.approx(expected.tolist(), rel=1e-5)
    scale = flow.reference.mean_landmark_scale()  # the default `nyul_scale`
    for i, volume in enumerate(volumes):
        masks = volume.slice_masks
        zero, half, one = (outputs[w][i] for w in (0.0, 0.5, 1.0))
        assert half.notes["nyul_weight"] == 0.5 and "nyul_weight" not in zero.notes
        np.testing.assert_allclose(half.slices, (zero.slices + one.slices) / 2, atol=1e-5)
        nyul = np.clip(piecewise_linear(corrected[i], site.landmarks, scale.intensities), 0, 1)
        np.testing.assert_allclose(one.slices[masks], nyul, atol=1e-5)
    with pytest.raises(ValueError, match="nyul_weight"):
        CalibrationConfig(nyul_weight=1.5)


def test_nyul_scale_mean_maps_onto_the_targets_mean_landmarks(flow, volumes):
    """`nyul_scale` 'mean': the site's (and the scan's) Nyul maps map onto the target
    training volumes' mean landmarks instead of Nyul's standard scale, from the same
    site fit; a prior without them maps onto the standard scale and says so."""
    from bh_jax.baselines.nyul import piecewise_linear

    quick = {"steps": 2, "pool": 8, "field_steps": 2, "fallback": False, "noise_matched": False,
             "nyul_weight": 1.0, "scan_nyul_weight": 0.0, "scan_nyul_contrast_gain": 0.0}
    older = replace(flow.reference, nyul_mean=np.full_like(flow.reference.nyul_mean, np.nan))
    assert not np.allclose(flow.reference.nyul_mean, flow.reference.nyul, atol=1e-4)
    outputs, site = {}, None
    for scale, reference in (("standard", flow.reference), ("mean", flow.reference),
                             ("older", older)):
        config = CalibrationConfig(**quick, nyul_scale="standard" if scale == "standard"
                                   else "mean")
        harmonizer = Harmonizer(flow.model, flow.params, SolverConfig(calibration=config),
                                batch_size=8, devices=jax.devices()[:1])
        site = site or shared_curve(harmonizer, volumes, flow.reference)
        outputs[scale] = harmonize_volumes(harmonizer, volumes, reference, site=site)
    for i, volume in enumerate(volumes):
        mean, older_prior = outputs["mean"][i], outputs["older"][i]
        log_field = mean.transform.field.log_field(volume.world_positions())
        corrected = (volume.slices * np.exp(-log_field))[volume.slice_masks]
        expected = np.clip(piecewise_linear(corrected, site.landmarks,
                                            flow.reference.nyul_mean), 0, 1)
        np.testing.assert_allclose(mean.slices[volume.slice_masks], expected, atol=1e-5)
        assert not np.allclose(mean.slices, outputs["standard"][i].slices, atol=1e-4)
        assert "nyul_scale" not in mean.notes
        np.testing.assert_array_equal(older_prior.slices, outputs["standard"][i].slices)
        assert older_prior.notes["nyul_scale"].startswith("standard: this prior's target "
                                                          "statistics have no mean landmarks")
    with pytest.raises(ValueError, match="nyul_scale must be one of standard, mean"):
        CalibrationConfig(nyul_scale="median")


def test_a_prior_without_a_nyul_scale_harmonizes_with_the_curve_alone(flow, volumes):
    """A prior made before the Nyul scale: the default's Nyul maps drop out (its
    warning is tested with the command line), the site's curve is refitted after the
    fields, and the safety net scores the transform only; the outputs are those of
    the curve alone on the same prior."""
    old = replace(flow.reference, nyul=np.full_like(flow.reference.nyul, np.nan),
                  nyul_mean=np.full_like(flow.reference.nyul_mean, np.nan))
    quick = {"steps": 2, "pool": 8, "field_steps": 2, "fallback": False}
    default = CalibrationConfig(**quick)
    assert default.nyul_weight > 0 and default.scan_nyul_weight > 0
    curve_alone = CalibrationConfig(**quick, nyul_weight=0.0, scan_nyul_weight=0.0,
                                    scan_nyul_contrast_gain=0.0)
    outputs, site = [], None
    for config in (default, curve_alone):  # the same site fit: only how it is applied differs
        harmonizer = Harmonizer(flow.model, flow.params, SolverConfig(calibration=config),
                                batch_size=8, devices=jax.devices()[:1])
        site = site or shared_curve(harmonizer, volumes[:1], old)
        outputs.append(harmonize_volumes(harmonizer, volumes[:1], old, site=site))
    assert site.refitted and site.landmarks is None
    for with_default, alone in zip(*outputs):
        np.testing.assert_array_equal(with_default.slices, alone.slices)
        assert list(with_default.notes["bits_per_dim"]) == ["transform"]
        assert "nyul_weight" not in with_default.notes
        assert "scan_nyul_weight" not in with_default.notes
        assert "nyul_scale" not in with_default.notes  # no Nyul map, no scale to note


def test_scan_nyul_weight_averages_in_the_volumes_own_nyul_map(flow, volumes):
    """`scan_nyul_weight` v: (1 - v) * the site's transform + v * the volume's own Nyul
    map, its landmarks measured on its field-corrected slices: at v = 1 Nyul's
    piecewise-linear map from those landmarks, at 0.5 the mean of the outputs at 0 and 1."""
    from bh_jax.baselines.nyul import PERCENTILES, piecewise_linear

    outputs, site = {}, None
    for weight in (0.0, 0.5, 1.0):
        config = CalibrationConfig(steps=2, pool=8, field_steps=2, fallback=False,
                                   noise_matched=False, nyul_weight=0.0,
                                   scan_nyul_weight=weight, scan_nyul_contrast_gain=0.0)
        harmonizer = Harmonizer(flow.model, flow.params, SolverConfig(calibration=config),
                                batch_size=8, devices=jax.devices()[:1])
        site = site or shared_curve(harmonizer, volumes, flow.reference)
        outputs[weight] = harmonize_volumes(harmonizer, volumes, flow.reference, site=site)
    scale = flow.reference.mean_landmark_scale()  # the default `nyul_scale`
    for i, volume in enumerate(volumes):
        zero, half, one = (outputs[w][i] for w in (0.0, 0.5, 1.0))
        log_field = zero.transform.field.log_field(volume.world_positions())
        corrected = (volume.slices * np.exp(-log_field))[volume.slice_masks]
        own = np.clip(piecewise_linear(corrected, np.percentile(corrected, PERCENTILES),
                                       scale.intensities), 0, 1)
        np.testing.assert_allclose(one.slices[volume.slice_masks], own, atol=1e-5)
        np.testing.assert_allclose(half.slices, (zero.slices + one.slices) / 2, atol=1e-5)
        assert half.notes["scan_nyul_weight"] == 0.5 and "scan_nyul_weight" not in zero.notes
    for name in ("scan_nyul_weight", "smooth_output"):
        with pytest.raises(ValueError, match=name):
            CalibrationConfig(**{name: -0.1})


def test_scan_nyul_contrast_gain_gives_each_volume_its_own_weight(flow, volumes):
    """`scan_nyul_contrast_gain` k: each volume's weight of its own map is
    clip(v + k (1 - r), 0, 1), r its contrast ratio (`nyul.contrast_ratio` of its
    corrected landmarks through the site's map); its output is the one a fixed weight
    of that value gives, and its report names r and the weight."""
    from bh_jax.baselines.nyul import PERCENTILES, contrast_ratio

    def harmonizer(**weights) -> Harmonizer:
        config = CalibrationConfig(steps=2, pool=8, field_steps=2, fallback=False,
                                   noise_matched=False, nyul_weight=1.0, **weights)
        return Harmonizer(flow.model, flow.params, SolverConfig(calibration=config),
                          batch_size=8, devices=jax.devices()[:1])

    gained = harmonizer(scan_nyul_weight=0.375, scan_nyul_contrast_gain=20.0,
                        scan_nyul_gain_flatter_only="none")
    site = shared_curve(gained, volumes, flow.reference)
    scale = flow.reference.nyul_scale()
    results = harmonize_volumes(gained, volumes, flow.reference, site=site)
    weights = []
    for volume, result in zip(volumes, results):
        log_field = result.transform.field.log_field(volume.world_positions())
        corrected = (volume.slices * np.exp(-log_field))[volume.slice_masks]
        ratio = contrast_ratio(np.percentile(corrected, PERCENTILES), site.landmarks, scale)
        weights.append(float(np.clip(0.375 + 20.0 * (1.0 - ratio), 0.0, 1.0)))
        assert result.notes["scan_contrast_ratio"] == pytest.approx(ratio, rel=1e-4)
        assert result.notes["scan_nyul_weight"] == pytest.approx(weights[-1], abs=1e-4)
    assert max(weights) > min(weights)  # the volumes' contrasts differ
    first = int(np.argmax(weights))  # one volume's output against a fixed weight's
    fixed = harmonize_volumes(harmonizer(scan_nyul_weight=weights[first],
                                         scan_nyul_contrast_gain=0.0), [volumes[first]],
                              flow.reference, site=site)[0]
    np.testing.assert_allclose(results[first].slices, fixed.slices, atol=1e-5)
    assert "scan_contrast_ratio" not in harmonize_volumes(
        harmonizer(scan_nyul_weight=0.375, scan_nyul_contrast_gain=0.0), volumes[:1],
        flow.reference, site=site)[0].notes
    flatter_only = harmonize_volumes(
        harmonizer(scan_nyul_weight=0.375, scan_nyul_contrast_gain=20.0,
                   scan_nyul_gain_flatter_only="all"), volumes, flow.reference, site=site)
    ratios = [r.notes["scan_contrast_ratio"] for r in results]
    assert min(ratios) < 1 < max(ratios)  # both sides are tested
    for ratio, result in zip(ratios, flatter_only):
        expected = min(0.375 + 20.0 * max(1.0 - ratio, 0.0), 1.0)
        assert result.notes["scan_nyul_weight"] == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="scan_nyul_contrast_gain"):
        CalibrationConfig(scan_nyul_contrast_gain=-1.0)


@pytest.mark.parametrize("spread, sides, noise_matched, expected", [
    (0.9, "none", False, 0.375 + 4 * 0.1), (1.05, "none", False, 0.375 - 4 * 0.05),
    (1.05, "all", False, 0.375), (0.9, "all", True, 0.375 + 4 * 0.1),
    (1.05, "noisy", False, 0.375 - 4 * 0.05), (1.05, "noisy", True, 0.375),
    (0.9, "noisy", True, 0.375 + 4 * 0.1), (1.3, "none", False, 0.0),
    (0.7, "noisy", True, 1.0)])
def test_the_contrast_gain_lowers_the_weight_only_on_the_scans_it_covers(
        flow, spread, sides, noise_matched, expected):
    """A scan whose landmarks spread `spread` times its site's about their middle has
    contrast ratio `spread` under the site's map (the standard scale itself here):
    it takes clip(0.375 + 4 (1 - r), 0, 1) of its own map, or 0.375 for r > 1 on a
    scan that `scan_nyul_gain_flatter_only` covers ('noisy': the noise-matched ones)."""
    scale = flow.reference.nyul_scale()
    site = np.asarray(scale.intensities, np.float64)
    own = site.mean() + spread * (site - site.mean())
    config = CalibrationConfig(scan_nyul_weight=0.375, scan_nyul_contrast_gain=4.0,
                               scan_nyul_gain_flatter_only=sides)
    weight, ratio = scan_map_weight(config, own, site, flow.reference, noise_matched)
    assert ratio == pytest.approx(spread, rel=1e-5)
    assert weight == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="scan_nyul_gain_flatter_only"):
        CalibrationConfig(scan_nyul_gain_flatter_only=True)


def test_at_nyul_weight_one_the_refit_after_fields_is_skipped_and_nothing_changes(
        flow, volumes, monkeypatch):
    """At `nyul_weight` 1 the curve's shape is weighted 0: the site fit skips its refit
    after the fields (one curve fit instead of two), keeps the refit's knots, and the
    outputs equal those from the refitted curve; the report says it was not refitted."""
    fits = []
    curve = Calibrator.curve
    monkeypatch.setattr(Calibrator, "curve", lambda self, *a, **k: fits.append(1) or curve(
        self, *a, **k))
    sites, harmonizers = {}, {}
    for weight in (0.5, 1.0):
        config = CalibrationConfig(steps=2, pool=8, field_steps=2, fallback=False,
                                   noise_matched=False, nyul_weight=weight,
                                   scan_nyul_weight=0.375)
        harmonizers[weight] = Harmonizer(flow.model, flow.params,
                                         SolverConfig(calibration=config), batch_size=8,
                                         devices=jax.devices()[:1])
        fits.clear()
        sites[weight] = shared_curve(harmonizers[weight], volumes, flow.reference)
        assert len(fits) == (2 if weight < 1 else 1)
    refitted, skipped = sites[0.5], sites[1.0]
    assert refitted.refitted and not skipped.refitted
    np.testing.assert_array_equal(skipped.first.values, refitted.first.values)
    np.testing.assert_array_equal(skipped.final.knots, refitted.final.knots)
    assert not np.allclose(skipped.final.values, refitted.final.values)
    np.testing.assert_allclose(skipped.landmarks, refitted.landmarks, rtol=1e-6)
    report = skipped.as_dict()
    assert report["curve"] is None and report["curve_refitted_after_fields"] is False
    assert refitted.as_dict()["curve"]["target"] == refitted.final.values.tolist()
    with_refit = harmonize_volumes(harmonizers[1.0], volumes, flow.reference, site=refitted)
    without = harmonize_volumes(harmonizers[1.0], volumes, flow.reference, site=skipped)
    grid = np.linspace(-0.5, 2.0, 2001)
    for a, b in zip(with_refit, without):
        np.testing.assert_allclose(b.slices, a.slices, atol=1e-6)
        # The same map everywhere, past the volumes' range too (where its ends hold).
        np.testing.assert_allclose(np.clip(b.transform.curve(grid), 0, 1),
                                   np.clip(a.transform.curve(grid), 0, 1), atol=1e-6)
