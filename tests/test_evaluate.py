import jax
import numpy as np
import pytest

from bh_jax.checkpoint import load_flow
from bh_jax.evaluate import prior_check, prior_scores
from bh_jax.input_pipeline import prepare_entry


def _val_slices(manifest, config, site, key="path"):
    entries = [e for e in manifest["images"] if e["split"] == "val" and e["site"] == site]
    return np.concatenate([prepare_entry(e, config.data, key=key).slices for e in entries])


def test_prior_scores_match_the_flow_slice_by_slice(trained, tiny_phantom):
    workdir, config, _ = trained
    flow = load_flow(workdir)
    slices = _val_slices(tiny_phantom[1], config, "exp")[:7]  # not a multiple of the batch
    scores = prior_scores(flow.model, flow.params, slices, batch_size=4)
    z, bpd = jax.jit(lambda p, x: (flow.model.encode(p, x), flow.model.bits_per_dim(p, x)))(
        flow.params, slices[..., None])
    np.testing.assert_allclose(scores["bpd"], bpd, rtol=1e-5)
    np.testing.assert_allclose(scores["z2"], np.mean(np.asarray(z) ** 2, axis=-1), rtol=1e-5)


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
    # Site D (noisy, blurred, strong bias) is far from the target: the prior says so.
    assert result["siteD"]["Source"]["bpd"] > result["siteD"]["Truth"]["bpd"]
