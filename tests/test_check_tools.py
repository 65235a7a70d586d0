"""The check scripts in tools/: the blends of a site's and a scan's own Nyul maps
(nyul_blend_check.py), the data set a check opens (noise_check.check_parser,
open_check), the target's own field recovered from the phantom (field_oracle.py) and
per-scan weights counted against the bars (per_scan_oracle.py), several checks read as
one (merge_checks.py), the safety net's margins counted (safety_net_margins.py) and a
site's Nyul map onto two scales (nyul_scale_check.py)."""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from bh_jax.baselines.nyul import PERCENTILES, NyulScale, landmarks
from bh_jax.data.manifest import load_manifest, prepare_entry, select

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


def test_site_maps_are_the_librarys_site_nyul_per_site_of_the_given_size(monkeypatch):
    """'SCALE, mean' is `--method site-nyul` (pipeline.site_nyul, an independent path)
    of each site of `site_size` consecutive scans; 'SCALE, median' maps the site's
    median landmarks, which differ from the mean's for three unlike scans."""
    from bh_jax.harmonize.pipeline import site_nyul

    tool = _tool(monkeypatch, "nyul_scale_check")
    rng = np.random.default_rng(1)
    masks = np.zeros((2, 24, 24), bool)
    masks[:, 3:21, 3:21] = True
    volumes = []
    for power in (0.5, 1.0, 1.5, 3.0):
        slices = np.zeros(masks.shape, np.float32)
        slices[masks] = rng.uniform(0.1, 0.9, masks.sum()) ** power
        volumes.append(SimpleNamespace(slices=slices, slice_masks=masks))
    standard = NyulScale.fit([rng.uniform(0.1, 0.9, 4000) for _ in range(3)])
    shifted = NyulScale(standard.intensities * 0.9 + 0.05, standard.percentiles)
    outputs = tool.site_maps(volumes, {"standard": standard, "other": shifted}, site_size=3)
    reference = SimpleNamespace(nyul_scale=lambda: standard)
    expected = [r.slices for r in site_nyul(volumes[:3], reference)]
    expected += [r.slices for r in site_nyul(volumes[3:], reference)]  # a site of one
    for output, library in zip(outputs["standard, mean"], expected, strict=True):
        np.testing.assert_allclose(output, library, atol=1e-6)
    assert not np.allclose(outputs["standard, median"][0], outputs["standard, mean"][0],
                           atol=1e-3)
    np.testing.assert_allclose(outputs["standard, median"][3], outputs["standard, mean"][3])
    assert not np.allclose(outputs["other, mean"][0], outputs["standard, mean"][0], atol=1e-3)


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


def test_the_oracle_recovers_the_field_the_phantom_multiplied_in(monkeypatch, tiny_phantom,
                                                                 tmp_path):
    tool = _tool(monkeypatch, "field_oracle")
    import dataclasses

    from bh_jax.config import PhantomConfig
    from bh_jax.data import phantom

    _, manifest = tiny_phantom
    entry = next(e for e in manifest["images"] if e["site"] == phantom.TARGET_SITE)
    image = nib.load(entry["path"])
    mask = np.asarray(nib.load(entry["mask"]).dataobj) > 0
    # Without noise, the target's image over the same image rendered without a field
    # is the field itself: what the oracle must recover.
    protocol = dataclasses.replace(phantom.SITES[phantom.TARGET_SITE], noise=0.0)

    def rendered(bias: float) -> np.ndarray:
        monkeypatch.setitem(phantom.SITES, phantom.TARGET_SITE,
                            dataclasses.replace(protocol, bias=bias))
        index = int(entry["subject"].removeprefix("sub-"))
        _, images = phantom.render_subject(PhantomConfig(**manifest["config"]), index,
                                           sites=(phantom.TARGET_SITE,))
        return images[phantom.TARGET_SITE].astype(np.float64)

    flat, with_field = rendered(0.0), rendered(protocol.bias)
    noiseless = tmp_path / "noiseless.nii.gz"
    nib.save(nib.Nifti1Image(with_field.astype(np.float32), image.affine), str(noiseless))
    entry = {**entry, "path": str(noiseless)}
    log_field = tool.target_log_field(manifest, entry)
    np.testing.assert_allclose(log_field[mask], np.log(with_field[mask] / flat[mask]), atol=1e-5)
    assert np.std(log_field[mask]) > 0.005
    # Dividing by it gives the image without its field.
    written = tool.field_free(manifest, entry, tmp_path)["truth / its field"]
    np.testing.assert_allclose(np.asarray(nib.load(written["path"]).dataobj)[mask],
                               flat[mask], rtol=1e-5)
    # An image that is not the phantom's own is refused: its field is not known.
    altered = tmp_path / "altered.nii.gz"
    nib.save(nib.Nifti1Image((with_field * 1.01).astype(np.float32), image.affine),
             str(altered))
    with pytest.raises(ValueError, match="does not give the stored image"):
        tool.target_log_field(manifest, {**entry, "path": str(altered)})


def test_the_quadratic_fit_keeps_a_quadratic_field_and_is_least_squares(monkeypatch):
    tool = _tool(monkeypatch, "field_oracle")
    affine = np.diag([3.0, 2.0, 4.0, 1.0])
    mask = np.zeros((10, 12, 8), bool)
    mask[2:9, 1:11, 2:7] = True
    i, j, k = np.meshgrid(*map(np.arange, mask.shape), indexing="ij")
    x, y, z = 3.0 * i, 2.0 * j, 4.0 * k
    quadratic = 0.2 + 0.01 * x - 0.003 * y * z + 0.0004 * x * x
    np.testing.assert_allclose(tool.quadratic_fit(quadratic, mask, affine)[mask],
                               quadratic[mask], atol=1e-9)
    # A field beyond the basis: the residual is orthogonal to every term, and the fit
    # is zero outside the mask.
    rough = np.random.default_rng(0).normal(size=mask.shape)
    fitted = tool.quadratic_fit(rough, mask, affine)
    residual = (rough - fitted)[mask]
    for term in (np.ones_like(x), x, y * y, x * z):
        assert abs(np.dot(residual, term[mask])) < 1e-8 * np.linalg.norm(term[mask]) * mask.sum()
    assert np.all(fitted[~mask] == 0)


def test_per_scan_weights_are_counted_against_every_bar(monkeypatch):
    """Two subjects, weights 0 and 1: subject a scores (30, 0.97) at v = 0 and (20, 0.98)
    at v = 1, subject b (40, 0.96) and (36, 0.99). Mean PSNR >= 30 and Dice >= 0.975
    holds for (0, 1): (33, 0.98); (1, 1) (28, 0.985) fails PSNR, (0, 0) (35, 0.965) and
    (1, 0) (30, 0.97) fail Dice: one combination, and it rises along the subjects."""
    tool = _tool(monkeypatch, "per_scan_oracle")
    score = {("img", "v=0", "a"): (30.0, 0.97), ("img", "v=1", "a"): (20.0, 0.98),
             ("img", "v=0", "b"): (40.0, 0.96), ("img", "v=1", "b"): (36.0, 0.99)}
    bars = {"log": (30.0, 0.975), "exp": (29.0, 0.97)}
    assert tool.combinations_meeting(score, "img", ["a", "b"], [0.0, 1.0], bars) == (1, 0)
    assert tool.combinations_meeting(score, "img", ["b", "a"], [0.0, 1.0], bars) == (1, 1)
    assert tool.mean_scores(score, "img", ["a", "b"], [0.0, 1.0]) == pytest.approx((33.0, 0.98))
    bars["gamma0.7"] = (33.5, 0.0)  # a third bar no combination meets
    assert tool.combinations_meeting(score, "img", ["a", "b"], [0.0, 1.0], bars) == (0, 0)


def _check_run(folder, subjects, psnr, dice, seeds=(), site="log", phantom_seed=None):
    """A settings_check.json of `subjects` at `site`: the default at `psnr` and
    `dice` per subject, Nyul at 30 dB and Dice 0.97 (and the truths' own rows)."""
    import json
    rows = []
    for subject, p, d in zip(subjects, psnr, dice, strict=True):
        rows.append({"site": site, "subject": subject, "method": "default",
                     "psnr": p, "ssim": 0.99, "dice": d})
        rows.append({"site": site, "subject": subject, "method": "Nyul",
                     "psnr": 30.0, "ssim": 0.98, "dice": 0.97})
        rows.append({"site": "target", "subject": subject, "method": "Truth",
                     "psnr": 99.0, "ssim": 1.0, "dice": 0.972})
    folder.mkdir()
    (folder / "settings_check.json").write_text(json.dumps(
        {"rows": rows, "split": "val", "segmenter_seeds": list(seeds),
         "phantom_seed": phantom_seed}))


def test_merged_checks_average_over_every_groups_subjects(monkeypatch, tmp_path):
    tool = _tool(monkeypatch, "merge_checks")
    _check_run(tmp_path / "g1", ["sub-1", "sub-2"], [31.0, 33.0], [0.971, 0.969])
    _check_run(tmp_path / "g2", ["sub-3"], [35.0], [0.968])
    _check_run(tmp_path / "g1-exp", ["sub-1"], [40.0], [0.975], site="exp")
    rows = tool.merged_rows([tmp_path / "g1", tmp_path / "g2", tmp_path / "g1-exp"])
    assert len(rows) == 11  # sub-1's truth, scored by both of its runs, counts once
    # Hand-computed: PSNR margins 1, 3, 5 -> +3.00; Dice margins +0.001, -0.001, -0.002.
    assert "| default | +3.00 / -0.00067 (2 below) | +10.00 / +0.00500 (0 below) |" in (
        tool.margins(rows))
    assert "| default | 33.00 / 0.9900 / 0.9693 | 40.00 / 0.9900 / 0.9750 |" in (
        tool.summary(rows))


def test_merged_checks_pool_fresh_samples_as_other_subjects(monkeypatch, tmp_path):
    tool = _tool(monkeypatch, "merge_checks")
    _check_run(tmp_path / "s0", ["sub-1"], [31.0], [0.971], phantom_seed=0)
    _check_run(tmp_path / "s3", ["sub-1"], [27.0], [0.969], phantom_seed=3)
    rows = tool.merged_rows([tmp_path / "s0", tmp_path / "s3"])
    assert sorted({r["subject"] for r in rows}) == ["0:sub-1", "3:sub-1"]
    assert len(rows) == 6  # two subjects' default, Nyul and truth rows
    # PSNR margins +1 and -3 -> -1.00; Dice margins +0.001 and -0.001.
    assert "| default | -1.00 / +0.00000 (1 below) |" in tool.margins(rows)


def test_merged_checks_refuse_a_subject_twice_or_another_layout(monkeypatch, tmp_path):
    tool = _tool(monkeypatch, "merge_checks")
    _check_run(tmp_path / "g1", ["sub-1"], [31.0], [0.97])
    _check_run(tmp_path / "again", ["sub-1"], [31.0], [0.97])
    _check_run(tmp_path / "seeds", ["sub-2"], [31.0], [0.97], seeds=[1])
    with pytest.raises(SystemExit, match="sub-1 at log .default. is already in an earlier"):
        tool.merged_rows([tmp_path / "g1", tmp_path / "again"])
    with pytest.raises(SystemExit, match="segmenter seeds"):
        tool.merged_rows([tmp_path / "g1", tmp_path / "seeds"])
    with pytest.raises(SystemExit, match="missing"):
        tool.merged_rows([tmp_path / "g1", tmp_path / "nowhere"])


def test_merged_checks_refuse_a_run_without_its_seed_beside_one_with(monkeypatch, tmp_path):
    """A run that records no seed may be of the same sample as one recording seed 0:
    its sub-1 might be that run's, so merging them is refused, in either order."""
    tool = _tool(monkeypatch, "merge_checks")
    _check_run(tmp_path / "old", ["sub-1"], [31.0], [0.97])
    _check_run(tmp_path / "s0", ["sub-1"], [31.0], [0.97], phantom_seed=0)
    for folders in (["old", "s0"], ["s0", "old"]):
        with pytest.raises(SystemExit, match=r"old/settings_check.json: records no data-set "
                                             r"seed, so its subjects cannot be told from "
                                             r"those of .*s0/settings_check.json"):
            tool.merged_rows([tmp_path / f for f in folders])
    again = tool.merged_rows([tmp_path / "s0"])  # one run: named by its seed
    assert {r["subject"] for r in again} == {"0:sub-1"}


def test_safety_net_margins_count_the_gaps_above_each_margin(monkeypatch, tmp_path):
    """Gaps (output's bits/dim minus Nyul's) 0.02, 0.08 and an intruder's 0.3: flagged
    3 / 2 / 1 / 0 at margins 0, 0.05, 0.1, 0.5; 2 below Nyul's PSNR; the intruder's gap
    named."""
    tool = _tool(monkeypatch, "safety_net_margins")

    def row(subject, gap, psnr):
        return {"site": "log", "subject": subject, "bpd_default": -7.0 + gap, "bpd_nyul": -7.0,
                "default": {"psnr": psnr}, "nyul": {"psnr": 30.0}}

    run = tmp_path / "run"
    run.mkdir()
    (run / "safety_net_check.json").write_text(json.dumps({"rows": [
        row("sub-001", 0.02, 35.0), row("sub-002", 0.08, 29.0),
        row("sub-001 (siteC)", 0.3, 20.0)]}))
    table = tool.margin_table([run], [0.0, 0.05, 0.1, 0.5]).splitlines()
    assert len(table) == 3
    assert table[2] == ("| run | log (intruder's gap +0.300) | 3 | 2 | +0.300 | 3 | 2 | 1 | 0 |")


def test_population_check_pools_a_sites_landmarks_by_mean_and_median(monkeypatch, trained,
                                                                      tiny_phantom, tmp_path):
    tool = _tool(monkeypatch, "population_check")
    folder, _ = tiny_phantom
    results = {}
    for split in ("val", "test"):  # the tiny set's 1 and 2 subjects
        out = tmp_path / split
        population = ["--population", "3"] if split == "test" else []
        monkeypatch.setattr("sys.argv", ["population_check", "--checkpoint", str(trained[0]),
                                         "--data-dir", str(folder), "--out", str(out),
                                         "--split", split, "--site", "exp", *population])
        tool.main()
        results[split] = json.loads((out / "population_check.json").read_text())
    # One scan: the site's map is its own, whichever the pooling.
    (only,) = results["val"]["subjects"]
    assert only["psnr"]["site map (mean)"] == pytest.approx(only["psnr"]["Nyul"], abs=1e-4)
    assert only["psnr"]["site map (median)"] == pytest.approx(only["psnr"]["Nyul"], abs=1e-4)
    # Two scans: the median is the mean, and neither is either scan's own map.
    test = results["test"]["subjects"]
    assert len(test) == 2
    for subject in test:
        psnr = subject["psnr"]
        assert psnr["site map (median)"] == pytest.approx(psnr["site map (mean)"], abs=1e-4)
    assert any(abs(s["psnr"]["site map (mean)"] - s["psnr"]["Nyul"]) > 0.01 for s in test)
    np.testing.assert_allclose(results["test"]["truth_landmarks_mean"],
                               np.mean([s["truth_landmarks"] for s in test], axis=0), atol=1e-9)
    table = tool.report(results["test"])
    assert "| truth mean |" in table and table.count("| sub-") == 4  # landmarks and PSNR rows
    # The population: 3 more subjects, their mean and spread, the sample's distance in SE.
    population = results["test"]["population"]
    assert population["subjects"] == 3 and "population" not in results["val"]
    assert np.all(np.diff(population["mean"]) > 0) and max(population["sd"]) > 0
    assert "| population mean (3 subjects) |" in table and "in sd / sqrt(2) |" in table


def test_the_population_is_rendered_as_the_data_sets_scans_are(monkeypatch, tiny_phantom,
                                                                tiny_config):
    """Subjects rendered in memory have the landmarks of the same subjects read back from
    the data set on disk (written as NIfTI, loaded and prepared by the pipeline)."""
    tool = _tool(monkeypatch, "population_check")
    _, manifest = tiny_phantom
    marks = tool.population_landmarks(tiny_config.phantom, tiny_config.data, PERCENTILES,
                                      count=2, start=0)
    for index, entry in enumerate(e for e in select(manifest, site="target")
                                  if e["subject"] in ("sub-000", "sub-001")):
        saved = prepare_entry(entry, tiny_config.data)
        np.testing.assert_allclose(
            marks[index], landmarks(saved.slices[saved.slice_masks], PERCENTILES), atol=1e-6)
    assert not np.allclose(marks[0], marks[1])  # two subjects, not one twice
