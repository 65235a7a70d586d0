"""Intensity transforms: averaging two curves into one."""

import numpy as np
import pytest

from bh_jax.harmonize.transform import BiasField, IntensityTransform, averaged


def test_averaged_maps_every_voxel_as_the_two_transforms_average():
    """Checked pointwise against the two transforms applied separately, including
    where one is clipped at 0 or 1 and where the second extrapolates."""
    rng = np.random.default_rng(0)
    field = BiasField(rng.normal(0, 0.1, 9), np.zeros(3), np.full(3, 50.0))
    first = IntensityTransform(np.array([0.05, 0.3, 0.6, 0.95]),
                               np.array([-0.1, 0.35, 0.7, 1.2]), field=field, smoothing_mm=1.5)
    second = IntensityTransform(np.array([0.1, 0.4, 0.9]), np.array([0.05, 0.5, 1.1]),
                                extrapolate=True, kind="site-nyul")
    mixed = averaged(first, second, 0.3)
    assert mixed.field is field and mixed.smoothing_mm == 1.5 and mixed.kind == "curve"
    x = rng.uniform(0.05, 0.95, 5000)
    world = rng.uniform(-50, 50, (5000, 3))
    corrected = x * np.exp(-field.log_field(world))
    inside = (corrected >= 0.05) & (corrected <= 0.95)
    expected = 0.7 * first(x, world) + 0.3 * second(corrected)
    np.testing.assert_allclose(mixed(x, world)[inside], expected[inside], atol=1e-6)
    assert np.all(np.diff(mixed.values) >= 0)
    with pytest.raises(ValueError, match="bare curve"):
        averaged(second, first, 0.5)
