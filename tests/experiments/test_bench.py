"""`bh-bench`: the sweep over the intensity calibration's settings, the solver timings,
the end-to-end study."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bh_jax.cli.bench import main
from bh_jax.data.manifest import prepare_entry
from bh_jax.experiments.bench import sweep
from bh_jax.experiments.evaluate import slice_scores
from bh_jax.harmonize.calibration import Calibrator
from bh_jax.harmonize.settings import CalibrationConfig
from bh_jax.training.checkpoint import load_flow

pytestmark = pytest.mark.slow  # benchmark


def test_sweep_grids_the_calibration_and_scores_each_curve(trained, tiny_phantom):
    workdir, config, _ = trained
    flow = load_flow(workdir)
    folder, manifest = tiny_phantom
    # Each volume's own curve alone (no field, noise matching or safety net).
    alone = dict(pool=8, shared=False, noise_matched=False, field_penalty=None, fallback=False,
                 nyul_weight=0.0, scan_nyul_weight=0.0, scan_nyul_contrast_gain=0.0)
    grid = [CalibrationConfig(steps=1, **alone), CalibrationConfig(steps=2, **alone)]
    rows = sweep(str(workdir), str(folder), 8, [0.0], [0.01], [0.05], [1], solver="curve",
                 calibrations=grid, sites=["exp"])
    assert [(r["calibration_steps"], r["calibration_pool"]) for r in rows] == [(1, 8), (2, 8)]
    entries = [e for e in manifest["images"] if e["split"] == "val" and e["site"] == "exp"]
    for row, calibration in zip(rows, grid):
        # Independently: fit each volume's curve, score the mapped slices against the truth.
        calibrator = Calibrator(flow.model, flow.params, calibration)
        psnr = []
        for entry in entries:
            source = prepare_entry(entry, config.data)
            truth = prepare_entry(entry, config.data, key="truth").slices
            curve, _ = calibrator.curve(source.slices, source.slice_masks, flow.reference)
            mapped = curve(source.slices, source.slice_masks)
            psnr.extend(slice_scores(mapped, truth, source.slice_masks)["psnr"])
        np.testing.assert_allclose(row["exp_psnr"], np.mean(psnr), rtol=1e-4)
    assert rows[0]["exp_psnr"] != rows[1]["exp_psnr"]


def test_sweep_refuses_calibration_settings_without_the_calibrated_start(trained, tiny_phantom,
                                                                        capsys):
    workdir, _, _ = trained
    folder, _ = tiny_phantom
    assert main(["sweep", "--checkpoint", str(workdir), "--data-dir", str(folder),
                 "--solver", "latent", "--calibration-steps", "5", "--sites", "exp"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: calibration settings apply to init 'calibrated' only")
    assert err.count("\n") == 1


def test_bench_harmonize_times_the_chosen_solvers_in_order_and_the_calibration(capsys):
    assert main(["harmonize", "--preset", "tiny", "--batch-size", "8", "--steps", "1",
                 "--repeats", "1", "--solvers", "curve", "alternating"]) == 0
    lines = [[cell.strip() for cell in line.strip().strip("|").split("|")]
             for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    header, rows = lines[0], [dict(zip(lines[0], cells)) for cells in lines[1:]]
    assert "calibration_eval_s" in header
    assert [r["solver"] for r in rows] == ["curve", "alternating"]
    for row in rows:
        assert float(row["slices_per_s"]) > 0 and float(row["memory_mib"]) > 0
        # Only the curve solver fits an intensity curve; the others leave the cell empty.
        if row["solver"] == "curve":
            assert float(row["calibration_eval_s"]) > 0
        else:
            assert row["calibration_eval_s"] == ""


def test_calibration_grid_covers_every_combination():
    from argparse import Namespace

    from bh_jax.cli.bench import _calibration_grid

    grid = _calibration_grid(Namespace(calibration_segments=[3, 5], calibration_pool=None,
                                       calibration_steps=[10, 20], each_volume=False))
    assert [(c.segments, c.pool, c.steps, c.shared) for c in grid] == [
        (3, 16, 10, True), (3, 16, 20, True), (5, 16, 10, True), (5, 16, 20, True)]
    assert _calibration_grid(Namespace(calibration_segments=None, calibration_pool=None,
                                       calibration_steps=None, each_volume=False)) == [None]
    each = _calibration_grid(Namespace(calibration_segments=None, calibration_pool=None,
                                       calibration_steps=None, each_volume=True))
    assert [(c.segments, c.shared) for c in each] == [(4, False)]


def test_bench_study_runs_harmonize_end_to_end_and_splits_its_time(trained, tiny_phantom,
                                                                   tmp_path, capsys):
    """Three scans from the two test subjects (copied under new names): each is harmonized
    and counted, and the main thread's parts of the time add up to less than the run's."""
    workdir, _, _ = trained
    folder, _ = tiny_phantom
    assert main(["study", "--checkpoint", str(workdir), "--data-dir", str(folder),
                 "--out", str(tmp_path), "--volumes", "3", "--methods", "hm",
                 "--json", str(tmp_path / "study.json")]) == 0
    (row,) = json.loads((tmp_path / "study.json").read_text())
    assert (row["method"], row["volumes"], row["exit"]) == ("hm", 3, 0)
    assert len(list((tmp_path / "hm").glob("scan-*_harmonized.nii.gz"))) == 3
    assert (tmp_path / "hm" / "report.html").is_file()
    parts = [row[k] for k in ("site_curve_s", "harmonize_s", "report_s", "rest_s",
                              "background_load_s", "background_write_s")]
    assert all(p >= 0 for p in parts) and row["harmonize_s"] > 0
    assert row["volumes_per_min"] == pytest.approx(180 / row["seconds"])
    assert "| hm | 3 | 0 |" in capsys.readouterr().out


def test_a_fresh_sample_is_drawn_with_its_own_seed(trained, tiny_phantom, tmp_path):
    """`phantom_seed` (bh-bench quality --phantom-seed): the same preset with other
    subjects; the prior's own data set refuses to stand in for it."""
    from bh_jax.experiments.bench import _evaluation

    workdir, config, _ = trained
    folder, manifest = tiny_phantom
    _, fresh = _evaluation(str(workdir), str(tmp_path / "fresh"), phantom_seed=5)
    assert fresh["config"]["seed"] == 5 != manifest["config"]["seed"]
    entry = next(e for e in fresh["images"] if e["split"] == "test")
    same = next(e for e in manifest["images"]
                if (e["subject"], e["site"]) == (entry["subject"], entry["site"]))
    ours, theirs = (prepare_entry(e, config.data).slices for e in (entry, same))
    assert ours.shape != theirs.shape or not np.allclose(ours, theirs)  # other anatomy
    with pytest.raises(ValueError, match="other settings"):
        _evaluation(str(workdir), str(folder), phantom_seed=5)
