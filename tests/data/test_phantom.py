import json

import nibabel as nib
import numpy as np
import pytest

from bh_jax.baselines.hm import histogram_match
from bh_jax.baselines.ssimh import spectrum_swap
from bh_jax.data import phantom
from bh_jax.data.manifest import select
from bh_jax.data.shifts import PAPER_SHIFTS, apply_shift
from bh_jax.experiments.evaluate import (
    classical_methods,
    evaluate_methods,
    target_reference,
)


def test_manifest_lists_truth_mask_and_wm_for_every_image(tiny_phantom):
    folder, manifest = tiny_phantom
    sites = manifest["sites"]
    scanners = [s for s, v in sites.items() if v["kind"] == "scanner"]
    assert len(scanners) >= 4 and manifest["target_site"] in sites
    for entry in manifest["images"]:
        for key in ("path", "truth", "mask", "wm"):
            assert nib.load(entry[key]).shape == nib.load(entry["path"]).shape
        assert phantom.TARGET_SITE in entry["truth"]
    splits = {s["split"] for s in manifest["subjects"]}
    assert splits == {"train", "val", "test"}


def test_generation_is_deterministic(tmp_path, tiny_config):
    cfg = tiny_config.phantom.__class__(voxel_mm=8.0, n_train=1, n_val=0, n_test=1, seed=3)
    first = phantom.generate(tmp_path / "a", cfg, progress=False)
    phantom.generate(tmp_path / "b", cfg, progress=False)
    for entry in first["images"]:
        a = nib.load(str(tmp_path / "a" / entry["path"])).get_fdata()
        b = nib.load(str(tmp_path / "b" / entry["path"])).get_fdata()
        np.testing.assert_array_equal(a, b)


def test_subjects_and_sites_differ(tiny_phantom):
    _, manifest = tiny_phantom
    target = [e for e in manifest["images"] if e["site"] == "target"]
    a, b = (nib.load(e["path"]).get_fdata() for e in target[:2])
    mask = nib.load(target[0]["mask"]).get_fdata() > 0
    assert not np.array_equal(nib.load(target[0]["mask"]).get_fdata(),
                              nib.load(target[1]["mask"]).get_fdata())
    sub = [e for e in manifest["images"] if e["subject"] == target[0]["subject"]]
    means = {e["site"]: phantom.unit_scale(nib.load(e["path"]).get_fdata(), mask)[mask].mean()
             for e in sub}
    assert len({round(v, 3) for v in means.values()}) == len(means), means
    assert a.shape == b.shape


def test_shifts_follow_the_paper():
    x = np.linspace(0, 1, 11)
    np.testing.assert_allclose(apply_shift(x, "exp"), (np.exp(x) - 1) / (np.e - 1), atol=1e-6)
    log = np.log1p(3 * x)
    np.testing.assert_allclose(apply_shift(x, "log"), log / log[-1], atol=1e-6)
    np.testing.assert_allclose(apply_shift(x, "gamma0.7"), x**0.7, atol=1e-6)
    np.testing.assert_allclose(apply_shift(2 * x, "gamma1.5"), x**1.5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown shift"):
        apply_shift(x, "sqrt")
    assert set(PAPER_SHIFTS) <= set(phantom.SHIFT_SITES)


def test_hm_and_ssimh_improve_on_paper_shifts(tiny_phantom, tiny_config):
    _, manifest = tiny_phantom
    reference = target_reference(manifest, tiny_config.data)
    results = evaluate_methods(manifest, tiny_config.data, classical_methods(reference),
                               sites=PAPER_SHIFTS)
    for site in PAPER_SHIFTS:
        for method in ("HM", "SSIMH"):
            assert results[site][method]["psnr"] > results[site]["Source"]["psnr"], (site, method)


def test_hm_leaves_background_and_ssimh_keeps_shape(tiny_phantom, tiny_config):
    _, manifest = tiny_phantom
    reference = target_reference(manifest, tiny_config.data)
    rng = np.random.default_rng(0)
    x = rng.random((3, 32, 32)).astype(np.float32) * 0.5
    mask = np.zeros_like(x, bool)
    mask[:, 8:24, 6:26] = True
    matched = histogram_match(x, mask, reference)
    np.testing.assert_array_equal(matched[~mask], x[~mask])
    np.testing.assert_allclose(np.quantile(matched[mask], [0.1, 0.5, 0.9]),
                               np.interp([0.1, 0.5, 0.9], np.linspace(0, 1, len(reference.quantiles)),
                                         reference.quantiles), atol=0.02)
    swapped = spectrum_swap(x, mask, reference)
    assert swapped.shape == x.shape and not swapped[~mask].any()


def test_typical_subject_keeps_anatomy_and_draws_but_not_tissue_constants(tiny_config):
    cfg = tiny_config.phantom
    own, images = phantom.render_subject(cfg, 1)
    typical, typical_images = phantom.render_subject(cfg, 1, typical=True)
    for tissue in ("gm", "wm", "csf", "mask"):
        np.testing.assert_array_equal(getattr(own, tissue), getattr(typical, tissue))
    assert set(typical.pd_factor.values()) == {1.0}  # the mean of U(0.92, 1.08)
    assert set(own.pd_factor.values()) != {1.0}
    for tissue, field in typical.t1_factor.items():
        # The same texture about a different constant: the ratio is constant.
        ratio = own.t1_factor[tissue] / field
        np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
    mask = own.mask
    own_target, typical_target = images["target"][mask], typical_images["target"][mask]
    assert not np.allclose(own_target, typical_target, rtol=1e-3)
    assert np.corrcoef(own_target, typical_target)[0, 1] > 0.9


def test_render_subject_is_what_generate_writes(tmp_path, tiny_config):
    cfg = tiny_config.phantom.__class__(voxel_mm=8.0, n_train=1, n_val=0, n_test=1, seed=3)
    manifest = phantom.generate(tmp_path, cfg, progress=False)
    _, images = phantom.render_subject(cfg, 1)
    for entry in select(manifest, site="exp") + select(manifest, site="siteB"):
        if entry["subject"] == "sub-001":
            written = nib.load(str(tmp_path / entry["path"])).get_fdata()
            np.testing.assert_allclose(written, images[entry["site"]],
                                       atol=float(np.abs(images[entry["site"]]).max()) / 3e4)


def test_extra_subjects_add_to_the_data_set_and_leave_the_others(tmp_path, tiny_config):
    """Extra training subjects at the target only, extra validation subjects at every
    site, both after the test subjects; the first subjects are the same files."""
    from dataclasses import replace

    base = tiny_config.phantom.__class__(voxel_mm=8.0, n_train=1, n_val=1, n_test=1, seed=3)
    more = replace(base, extra_train=1, extra_val=1)
    small = phantom.generate(tmp_path / "a", base, progress=False)
    large = phantom.generate(tmp_path / "b", more, progress=False)
    splits = {s["subject"]: s["split"] for s in large["subjects"]}
    assert splits == {"sub-000": "train", "sub-001": "val", "sub-002": "test",
                      "sub-003": "train", "sub-004": "val"}
    sites = {s: {e["site"] for e in large["images"] if e["subject"] == s} for s in splits}
    assert sites["sub-003"] == {phantom.TARGET_SITE}
    assert sites["sub-004"] == sites["sub-001"] and len(sites["sub-004"]) == len(large["sites"])
    for entry in small["images"]:
        a = nib.load(str(tmp_path / "a" / entry["path"])).get_fdata()
        b = nib.load(str(tmp_path / "b" / entry["path"])).get_fdata()
        np.testing.assert_array_equal(a, b)
    # A data set with more validation subjects serves the smaller configuration;
    # one with fewer is refused.
    served = phantom.ensure_phantom(tmp_path / "b", replace(more, extra_val=0))
    assert [s["subject"] for s in served["subjects"]] == list(splits)
    with pytest.raises(ValueError, match="holds 1 validation subjects, not 2"):
        phantom.ensure_phantom(tmp_path / "a", replace(base, extra_val=1))


def test_cli_refuses_fewer_validation_subjects_than_the_preset(tmp_path, run_main):
    from bh_jax.cli import phantom as phantom_cli

    result = run_main(phantom_cli.main, "--out", tmp_path / "o", "--preset", "demo",
                      "--val-subjects", "2")
    assert result.returncode == 2
    assert "--val-subjects must be at least the preset's 3, got 2" in result.stderr
    assert not (tmp_path / "o").exists()


def test_cli_builds_a_data_set_with_another_seed_and_reports_it(tmp_path, run_main,
                                                                tiny_phantom):
    from bh_jax.cli import phantom as phantom_cli

    out = tmp_path / "o"
    result = run_main(phantom_cli.main, "--out", out, "--preset", "tiny", "--seed", "5",
                      "--report")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 5 and (out / "sites.png").is_file()
    counts = [sum(s["split"] == split for s in manifest["subjects"])
              for split in ("train", "val", "test")]
    assert (f"{len(manifest['subjects'])} subjects ({counts[0]} train / {counts[1]} val / "
            f"{counts[2]} test), {len(manifest['sites'])} sites") in result.stdout
    # Another seed: other subjects than the preset's (seed 0) data set.
    default_folder, _ = tiny_phantom
    entry = next(e for e in manifest["images"] if e["site"] == "target")
    assert not np.array_equal(nib.load(str(out / entry["path"])).get_fdata(),
                              nib.load(str(default_folder / entry["path"])).get_fdata())
    rows = [line.split(" | ")[0] for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows == ["| method", "| Source", "| HM", "| Nyul", "| Nyul per site", "| SSIMH"]
