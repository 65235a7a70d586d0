"""tools/nyul_blend_check.py: the blends of a site's and a scan's own Nyul maps."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bh_jax.baselines.nyul import NyulScale, landmarks

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _tool(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))  # it imports its neighbour noise_check
    spec = importlib.util.spec_from_file_location("nyul_blend_check",
                                                  TOOLS / "nyul_blend_check.py")
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
