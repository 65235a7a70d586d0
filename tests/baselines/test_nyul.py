"""Nyul standardization per scan and per site (`bh_jax.baselines.nyul`)."""

import numpy as np
import pytest

from bh_jax.baselines.nyul import (
    PERCENTILES,
    NyulScale,
    contrast_ratio,
    landmarks,
    site_landmarks,
)


def _subjects(seed: int = 0) -> list[np.ndarray]:
    """Three 'subjects' with different tissue contrasts: mixtures of three tissues."""
    rng = np.random.default_rng(seed)
    subjects = []
    for grey, white in [(0.45, 0.75), (0.5, 0.7), (0.4, 0.8)]:
        labels = rng.integers(0, 3, 4000)
        means = np.array([0.2, grey, white])[labels]
        subjects.append(np.clip(means + 0.03 * rng.standard_normal(4000), 0.01, 0.99))
    return subjects


def _one_scanner() -> tuple[list[np.ndarray], NyulScale, list[np.ndarray], np.ndarray]:
    """(truths, a scale of their mean landmarks, their scans through one affine scanner
    map, the scans' site landmarks)."""
    truths = _subjects()
    scale = NyulScale(np.mean([landmarks(t) for t in truths], axis=0).astype(np.float32),
                      np.asarray(PERCENTILES, np.float32))
    scans = [0.6 * t + 0.3 for t in truths]
    return truths, scale, scans, site_landmarks(scans)


def test_site_landmarks_are_the_mean_of_the_volumes_landmarks():
    subjects = _subjects()
    expected = np.mean([np.percentile(v, PERCENTILES) for v in subjects], axis=0)
    np.testing.assert_allclose(site_landmarks(subjects), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="at least one volume"):
        site_landmarks([])


def test_one_volumes_site_map_is_its_nyul_map():
    subjects = _subjects()
    scale = NyulScale.fit(subjects)
    x, mask = subjects[0], np.ones_like(subjects[0], bool)
    np.testing.assert_allclose(scale(x, mask, site_landmarks([x])), scale(x, mask), atol=1e-6)


def test_a_site_map_undoes_a_scanner_map_and_keeps_each_subjects_contrast():
    # Scale = the subjects' mean landmarks; their scans all went through one affine
    # scanner map. One map from the scans' mean landmarks is that map's inverse, so
    # every subject comes back exactly; a map per scan normalises each subject's own
    # contrast onto the mean, so it does not.
    truths, scale, scans, site = _one_scanner()
    per_scan_errors = []
    for truth, scan in zip(truths, scans):
        mask = np.ones_like(scan, bool)
        np.testing.assert_allclose(scale(scan, mask, site), truth, atol=2e-6)
        per_scan_errors.append(np.max(np.abs(scale(scan, mask) - truth)))
    assert max(per_scan_errors) > 0.03  # the low- and high-contrast subjects


def test_contrast_ratio_is_a_subjects_spread_over_the_scales_through_its_sites_map():
    # Scans of one scanner (one affine map of the truths): the site's map undoes it, so
    # each scan's ratio is its truth's 10th-90th percentile spread over the scale's.
    truths, scale, scans, site = _one_scanner()
    standard = np.interp([10, 90], PERCENTILES, scale.intensities)
    for truth, scan in zip(truths, scans):
        spread = np.subtract(*np.percentile(truth, [90, 10]))
        assert contrast_ratio(landmarks(scan), site, scale) == pytest.approx(
            spread / (standard[1] - standard[0]), rel=1e-5)
    ratios = [contrast_ratio(landmarks(s), site, scale) for s in scans]
    assert ratios[2] > ratios[0] > ratios[1]  # white - grey: 0.4 > 0.3 > 0.2
    assert contrast_ratio(site, site, scale) == pytest.approx(1.0, abs=1e-6)
    flat = NyulScale(np.full(len(PERCENTILES), 0.5, np.float32), scale.percentiles)
    assert contrast_ratio(site, site, flat) == 1.0  # no spread to compare with
