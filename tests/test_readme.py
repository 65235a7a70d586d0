"""The README's Python API block runs as written (on the tiny checkpoint and data)."""

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # documentation

ROOT = Path(__file__).resolve().parents[1]


def readme_code(heading: str) -> str:
    """The first ```python block under the README's `## heading`."""
    section = (ROOT / "README.md").read_text().split(f"\n## {heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_python_api_block_runs(trained, tiny_phantom, tmp_path, monkeypatch):
    import bh_jax.pretrained

    workdir, config, _ = trained
    _, manifest = tiny_phantom
    entry = next(e for e in manifest["images"] if e["split"] == "test" and e["site"] == "exp")
    (tmp_path / "scan.nii.gz").write_bytes(Path(entry["path"]).read_bytes())
    monkeypatch.chdir(tmp_path)
    # The block loads the shipped `demo` prior; the tiny one keeps the test quick, and
    # so does the default site curve with two optimiser steps and no field (the
    # command-line tests fit fields).
    monkeypatch.setattr(bh_jax.pretrained, "path", lambda name="demo": workdir)
    quick = bh_jax.CalibrationConfig(steps=2, pool=8, field_penalty=None)
    monkeypatch.setattr(bh_jax, "SolverConfig",
                        lambda: bh_jax.harmonize.SolverConfig(calibration=quick))
    names: dict = {}
    exec(compile(readme_code("Python API"), "README.md (Python API)", "exec"), names)

    source, written = nib.load("scan.nii.gz"), nib.load("scan_harmonized.nii.gz")
    assert written.shape == source.shape
    np.testing.assert_array_equal(written.affine, source.affine)
    prepared = names["prepared"]
    for result in (names["results"][0], names["latent"]):
        assert result.slices.shape == prepared.slices.shape
        assert np.all(np.isfinite(result.slices))
    assert names["results"][0].exact_transform and len(names["results"]) == 1
    assert names["harmonizer"].settings.solver == "curve"
    assert names["harmonizer"].settings.calibration.shared
    np.testing.assert_allclose(names["x"], prepared.slices[..., None], atol=1e-4)
    h, w = config.data.height, config.data.width
    assert names["samples"].shape == (4, h, w, 1)
