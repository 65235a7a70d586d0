"""Evaluation on the built-in data: the prior check, the oracle affine map, the references."""

import numpy as np
import pytest

from bh_jax.data.manifest import prepare_entry
from bh_jax.experiments.evaluate import best_affine, prior_check
from bh_jax.training.checkpoint import load_flow
from bh_jax.training.qc import prior_scores


def _val_slices(manifest, config, site, key="path"):
    entries = [e for e in manifest["images"] if e["split"] == "val" and e["site"] == site]
    return np.concatenate([prepare_entry(e, config.data, key=key).slices for e in entries])


def test_prior_check_ranks_truth_hm_and_source(trained, tiny_phantom):
    workdir, config, _ = trained
    _, manifest = tiny_phantom
    flow = load_flow(workdir)
    result = prior_check(flow, manifest, ["exp", "siteD", "no-such-site"], batch_size=4)
    assert set(result) == {"exp", "siteD"}
    truth = _val_slices(manifest, config, "exp", key="truth")
    expected = prior_scores(flow.model, flow.params, truth)
    for site, r in result.items():
        assert r["slices"] == len(truth)
        # The truth is the same subject's target image for every site.
        assert r["Truth"]["bpd"] == pytest.approx(float(expected["bpd"].mean()), rel=1e-5)
        assert r["Truth"]["z2"] == pytest.approx(float(expected["z2"].mean()), rel=1e-5)
        assert 0.0 <= r["truth_preferred_bpd"] <= 1.0 and 0.0 <= r["truth_preferred_z2"] <= 1.0
        assert set(r["Affine"]) == {"bpd", "z2", "psnr"}
    # exp is nearly affine inside the brain: the oracle affine map is far closer than the source.
    assert result["exp"]["Affine"]["psnr"] > result["exp"]["Source"]["psnr"] + 3.0
    # Site D (noisy, blurred, strong bias) is far from the target: the prior says so.
    assert result["siteD"]["Source"]["bpd"] > result["siteD"]["Truth"]["bpd"]


def test_best_affine_recovers_an_exact_affine_map(small_volume):
    source, masks = small_volume()
    truth = np.where(masks, 0.6 * source + 0.15, 0.0).astype(np.float32)
    np.testing.assert_allclose(best_affine(source, truth, masks), truth, atol=1e-6)
    # Outside the mask it is zero whatever the source; an empty mask gives zeros.
    assert np.all(best_affine(source + 1.0, truth, masks)[~masks] == 0)
    assert not best_affine(source, truth, np.zeros_like(masks)).any()


def test_typical_contrast_reference_is_the_typical_subject_prepared_like_the_truth(
        tiny_config, tiny_phantom, tmp_path):
    import nibabel as nib

    from bh_jax.data import phantom
    from bh_jax.data.manifest import select
    from bh_jax.experiments.evaluate import typical_contrast_method

    folder, manifest = tiny_phantom
    entries = [e for e in select(manifest, "test") if e["site"] in ("exp", "siteB")]
    sources = [prepare_entry(e, tiny_config.data) for e in entries]
    outputs = typical_contrast_method(manifest, tiny_config.data)(sources)
    index = [s["subject"] for s in manifest["subjects"]].index(entries[0]["subject"])
    _, images = phantom.render_subject(tiny_config.phantom, index, typical=True)
    path = tmp_path / "typical.nii.gz"  # through the file reader, as the truth is read
    nib.save(nib.Nifti1Image(images["target"], nib.load(entries[0]["path"]).affine), path)
    expected = prepare_entry({**entries[0], "path": str(path)}, tiny_config.data).slices
    np.testing.assert_allclose(outputs[0], expected, atol=1e-6)
    for entry, source, output in zip(entries, sources, outputs):
        assert output.shape == source.slices.shape and not output[~source.slice_masks].any()
        truth = prepare_entry(entry, tiny_config.data, key="truth").slices
        assert 0 < np.abs(output - truth).max() < 0.5  # the contrast differs, not the anatomy


def test_calibration_check_scores_the_target_against_itself(trained, tiny_phantom):
    from bh_jax.baselines.hm import histogram_match
    from bh_jax.experiments.evaluate import calibration_check, slice_scores

    workdir, config, _ = trained
    _, manifest = tiny_phantom
    flow = load_flow(workdir)
    rows = calibration_check(flow, manifest, "val")
    targets = [e for e in manifest["images"] if e["split"] == "val" and e["site"] == "target"]
    assert [r["subject"] for r in rows] == [e["subject"] for e in targets]
    for row, entry in zip(rows, targets):
        image = prepare_entry(entry, config.data)
        hm = histogram_match(image.slices, image.slice_masks, flow.reference)
        expected = np.mean(slice_scores(hm, image.slices, image.slice_masks)["psnr"])
        np.testing.assert_allclose(row["hm_psnr"], expected, rtol=1e-5)
        knots, values = (np.array(row[k].split(), float) for k in ("knots", "values"))
        assert len(knots) == len(values) == 5 and np.all(np.diff(knots) > 0)
        assert np.all(np.diff(values) > 0) and np.isfinite(row["curve_psnr"])
