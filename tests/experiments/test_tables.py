"""The paper's tables on the built-in data (`bh-bench quality --quick`)."""

import json

import numpy as np
import pytest

from bh_jax.experiments.bench import quality
from bh_jax.experiments.evaluate import NYUL_PER_SITE, TYPICAL
from bh_jax.experiments.heldout import HELDOUT_MAPS, apply_map
from bh_jax.experiments.tables import SCANNERS, SHIFTS, USEFUL_CEILING, ceiling_warning

pytestmark = pytest.mark.slow  # benchmark


def test_quality_quick_end_to_end(trained, tiny_phantom, baselines, tmp_path):
    folder, _ = tiny_phantom
    # The `image` solver here: the default `curve` one runs in the demo and CLI tests.
    result = quality(str(trained[0]), str(folder), str(tmp_path), batch=8, quick=True,
                     solver="image", **{kind: str(baselines[kind][0]) for kind in baselines})
    assert result["settings"].startswith("SolverConfig(solver='image'")
    rows = ["Source", "BlindHarmony", "HM", "Nyul", NYUL_PER_SITE, "SSIMH", "CycleGAN (exp)",
            "U-net (exp)", TYPICAL]
    assert set(result["results"]) == set(SHIFTS + SCANNERS)
    for site, scores in result["results"].items():
        assert list(scores) == rows, site
        for name, values in scores.items():
            assert all(np.isfinite(values[m]) for m in ("psnr", "ssim", "dice")), (site, name)
    assert 0 <= result["wm_dice_target_ceiling"] <= 1
    markdown = (tmp_path / "quality.md").read_text()
    undertrained = result["wm_dice_target_ceiling"] < USEFUL_CEILING
    assert ("warning" in result) == ("Warning: the WM segmenter" in markdown) == undertrained
    assert markdown.count("| method |") == 3 and "Table 3" in markdown
    assert all(f"| {row} |" in markdown for row in rows)
    assert json.loads((tmp_path / "quality.json").read_text())["results"] == result["results"]
    assert (tmp_path / "quality.png").stat().st_size > 0


def test_quality_on_chosen_sites_only(trained, tiny_phantom, baselines, tmp_path):
    folder, _ = tiny_phantom
    given = {kind: str(baselines[kind][0]) for kind in baselines}
    result = quality(str(trained[0]), str(folder), str(tmp_path), batch=8, quick=True,
                     solver="curve", sites=["exp"], heldout_maps=True, **given)
    assert set(result["results"]) == {"exp", *HELDOUT_MAPS}
    markdown = (tmp_path / "quality.md").read_text()
    assert "Table 1" in markdown and "Table 2" not in markdown and "Table 3" in markdown
    table4 = markdown.split("Table 4")[1]
    assert all(f"{name} PSNR" in table4 for name in HELDOUT_MAPS) and "exp PSNR" not in table4
    with pytest.raises(ValueError, match="sites must be among"):
        quality(str(trained[0]), str(folder), str(tmp_path / "bad"), batch=8, quick=True,
                sites=["siteZ"], **given)


def test_an_undertrained_segmenter_is_flagged():
    assert "undertrained" in ceiling_warning(0.0) and "0.0000" in ceiling_warning(0.0)
    assert ceiling_warning(0.97) is None


def test_heldout_maps_are_increasing_and_keep_the_background():
    x = np.linspace(0.0, 1.0, 101)
    for name in HELDOUT_MAPS:
        y = apply_map(x, name)
        assert y[0] == 0.0 and y[-1] == pytest.approx(1.0) and np.all(np.diff(y) > 0), name
