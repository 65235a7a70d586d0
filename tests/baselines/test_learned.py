"""U-net, CycleGAN and WM segmenter baselines (tiny configs), and the paper's tables."""

import jax
import numpy as np
import pytest

from bh_jax.baselines.learned import (
    BaselineConfig,
    load_baseline,
    train_baseline,
    training_data,
)
from bh_jax.baselines.networks import PatchDiscriminator, UNet


def test_network_shapes():
    x = np.zeros((2, 32, 32, 1), np.float32)
    unet = UNet(features=4, depth=2, out_channels=3)
    assert unet.apply(unet.init(jax.random.PRNGKey(0), x), x).shape == (2, 32, 32, 3)
    residual = UNet(features=4, depth=2, residual=True)
    ones = np.ones_like(x)
    np.testing.assert_array_equal(  # zero-initialised output layer: identity at start
        residual.apply(residual.init(jax.random.PRNGKey(0), ones), ones), ones)
    disc = PatchDiscriminator(features=4, layers=2)
    assert disc.apply(disc.init(jax.random.PRNGKey(0), x), x).shape == (2, 8, 8)


@pytest.mark.parametrize("kind", ["unet", "cyclegan", "segmenter"])
def test_loss_drops_and_checkpoint_round_trips(kind, baselines, tiny_phantom, tiny_config):
    _, manifest = tiny_phantom
    folder, config, metrics = baselines[kind]
    if kind == "cyclegan":  # the cycle starts exact (identity generators): check the GAN
        history = metrics["history"]
        assert np.isfinite([h["discriminator"] for h in history]).all()
        assert history[-1]["discriminator"] < history[0]["discriminator"]
    else:
        assert metrics["final_loss"] < 0.8 * metrics["first_loss"]
    loaded = load_baseline(folder)
    assert loaded.config == config and loaded.data == tiny_config.data
    arrays = training_data(config, manifest, tiny_config.data)
    images = arrays.get("source", arrays.get("image"))[:5]
    masks = arrays.get("source_mask", arrays.get("mask"))[:5]
    out = loaded.apply(images, masks, batch_size=4)
    assert out.shape == images.shape
    assert out.dtype == (bool if kind == "segmenter" else np.float32)
    assert not out[~masks].any()


def test_baseline_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="baseline.json: not found"):
        load_baseline(tmp_path)
    with pytest.raises(ValueError, match="kind must be one of"):
        BaselineConfig("gan")


def test_unknown_source_site(tiny_phantom, tiny_config):
    _, manifest = tiny_phantom
    with pytest.raises(ValueError, match="no train images of source site 'nope'"):
        training_data(BaselineConfig("unet", source="nope"), manifest, tiny_config.data)


def test_interrupted_training_resumes_exactly(tiny_phantom, tiny_config, tmp_path):
    _, manifest = tiny_phantom
    config = BaselineConfig("unet", features=4, steps=12, batch_size=4)
    train_baseline(config, tiny_config.data, manifest, tmp_path / "straight", progress=False)
    stopped = train_baseline(config, tiny_config.data, manifest, tmp_path / "resumed",
                             progress=False, stop_at=5)
    assert stopped == {}
    with pytest.raises(ValueError, match="training has not finished"):
        load_baseline(tmp_path / "resumed")
    resumed = train_baseline(config, tiny_config.data, manifest, tmp_path / "resumed",
                             progress=False)
    assert [h["step"] for h in resumed["history"]] == [0, 11]
    a, b = (load_baseline(tmp_path / name).params for name in ("straight", "resumed"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, atol=1e-6)
    other = BaselineConfig("unet", features=4, steps=20, batch_size=4)
    with pytest.raises(ValueError, match="holds a different baseline"):
        train_baseline(other, tiny_config.data, manifest, tmp_path / "resumed", progress=False)
