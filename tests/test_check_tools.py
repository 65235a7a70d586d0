"""The check scripts in tools/: the blends of a site's and a scan's own Nyul maps
(nyul_blend_check.py) and the data set a check opens (noise_check.check_parser,
open_check)."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from bh_jax.baselines.nyul import NyulScale, landmarks
from bh_jax.data.manifest import load_manifest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _tool(monkeypatch, name="nyul_blend_check"):
    monkeypatch.syspath_prepend(str(TOOLS))  # the checks import their neighbour noise_check
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_blends_run_from_the_sites_map_to_each_scans_own(monkeypatch):
    tool = _tool(monkeypatch)
    rng = np.random.default_rng(0)
    scale = NyulScale.fit([rng.uniform(0.1, 0.9, 4000) for _ in range(3)])
    masks = np.zeros((2, 40, 40), bool)
    masks[:, 4:36, 4:36] = True
    # Two scans of one scanner with different contrasts, and the same probe values at
    # their first voxels.
    probes = np.linspace(0.3, 0.7, 9)
    volumes = []
    for power in (1.0, 1.5):
        brain = rng.uniform(0.2, 0.8, masks.sum()) ** power
        brain[:probes.size] = probes
        slices = np.zeros(masks.shape, np.float32)
        slices[masks] = brain
        volumes.append(SimpleNamespace(slices=slices, slice_masks=masks))
    outputs = tool.blends(volumes, scale, [0.0, 0.5, 1.0])

    # v = 1 is Nyul: each scan's landmarks land on the standard scale.
    for output in outputs["v=1"]:
        np.testing.assert_allclose(landmarks(output[masks], scale.percentiles),
                                   scale.intensities, atol=2e-3)
    # v = 0 is one map for the site: the probes come out the same from both scans;
    # each scan's own map (v = 1) sends them to different values.
    at_probes = {name: [o[masks][:probes.size] for o in outs] for name, outs in outputs.items()}
    np.testing.assert_allclose(*at_probes["v=0"], atol=1e-6)
    assert np.max(np.abs(np.subtract(*at_probes["v=1"]))) > 0.02
    # In between, the two maps averaged; the background stays zero.
    for i in range(2):
        np.testing.assert_allclose(outputs["v=0.5"][i],
                                   (outputs["v=0"][i] + outputs["v=1"][i]) / 2, atol=1e-6)
        assert np.all(outputs["v=0.5"][i][~masks] == 0)


def test_a_check_draws_fresh_subjects_with_another_phantom_seed(monkeypatch, trained,
                                                                 tiny_phantom, tmp_path):
    tool = _tool(monkeypatch, "noise_check")
    usual_folder, usual = tiny_phantom
    args = tool.check_parser("a check").parse_args(
        ["--checkpoint", str(trained[0]), "--data-dir", str(tmp_path / "seed5"),
         "--out", str(tmp_path / "out"), "--phantom-seed", "5"])
    _, manifest, _ = tool.open_check(args)
    assert manifest["config"]["seed"] == 5 and usual["config"]["seed"] != 5
    assert load_manifest(args.data_dir)["config"] == manifest["config"]
    # The same subjects' names, other anatomy: the first target-site scans differ.
    fresh, old = (nib.load(next(e["path"] for e in m["images"] if e["site"] == "target"))
                  for m in (manifest, usual))
    assert Path(fresh.get_filename()).parent.parent == Path(args.data_dir).resolve()
    assert fresh.shape == old.shape
    assert np.mean(np.abs(fresh.get_fdata() - old.get_fdata())) > 0.01 * np.max(old.get_fdata())
    # Opening the fresh set as the prior's own is refused, not silently mixed.
    with pytest.raises(ValueError, match="other settings"):
        tool.open_check(SimpleNamespace(**{**vars(args), "phantom_seed": None}))
