"""Training: learning, exact resume, sharding equivalence, clear errors."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bh_jax.flows.model import FlowModel
from bh_jax.sharding import data_mesh, replicate, shard_batch
from bh_jax.training.checkpoint import load_flow
from bh_jax.training.state import create_state
from bh_jax.training.train import train

ROOT = Path(__file__).resolve().parents[2]


def test_training_lowers_validation_bpd(trained):
    workdir, config, metrics = trained
    history = metrics["history"]
    assert history[0]["step"] == 0 and history[-1]["step"] == config.train.steps
    assert metrics["best_val_bpd"] < history[0]["val_bpd"] - 1.0, history
    assert (workdir / "samples.png").is_file() and (workdir / "config.json").is_file()


def test_checkpoint_folder_alone_gives_a_usable_flow(trained):
    workdir, config, metrics = trained
    loaded = load_flow(workdir)
    assert loaded.config == config
    assert loaded.identity["step"] == metrics["best_step"]
    samples = loaded.model.sample(loaded.params, jax.random.PRNGKey(0), 3, 0.7)
    assert samples.shape == (3, config.data.height, config.data.width, 1)
    assert bool(jnp.all(jnp.isfinite(samples)))


def test_resume_matches_uninterrupted(tmp_path, tiny_config, tiny_slices):
    config = tiny_config.replace(train={"steps": 6, "eval_every": 3, "batch_size": 8})
    one = jax.devices()[:1]
    straight = train(config, tmp_path / "straight", *tiny_slices, progress=False, devices=one)
    train(config, tmp_path / "resumed", *tiny_slices, progress=False, stop_at=3, devices=one)
    resumed = train(config, tmp_path / "resumed", *tiny_slices, progress=False, devices=one)
    a = load_flow(tmp_path / "straight", which="latest").params
    b = load_flow(tmp_path / "resumed", which="latest").params
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, atol=1e-6)
    assert straight["final_val_bpd"] == pytest.approx(resumed["final_val_bpd"], abs=1e-6)


def test_step_on_8_devices_matches_1_device(tiny_config, tiny_slices):
    """The loss and its gradient of a batch sharded over 8 devices equal the
    one-device ones: the property data parallelism needs."""
    assert jax.device_count() == 8, "conftest sets 8 simulated CPU devices"
    config = tiny_config.replace(train={"batch_size": 8, "warmup_steps": 0})
    model = FlowModel(config.flow, config.data.height, config.data.width)
    batch = tiny_slices[0].slices[:8][..., None]
    state = create_state(model, config.train, jax.random.PRNGKey(0), jnp.asarray(batch))
    loss = jax.jit(jax.value_and_grad(lambda p, x: jnp.mean(model.bits_per_dim(p, x))))
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = data_mesh(devices)
        params, sharded = replicate(mesh, state["params"]), shard_batch(mesh, batch)
        value, grads = loss(params, sharded)
        results.append((float(value), grads))
    (value_1, grads_1), (value_8, grads_8) = results
    assert value_8 == pytest.approx(value_1, rel=1e-6)
    for x, y in zip(jax.tree_util.tree_leaves(grads_1), jax.tree_util.tree_leaves(grads_8)):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)


def test_check_resume_refuses_a_file_as_workdir(tmp_path, tiny_config):
    from bh_jax.training.checkpoint import CheckpointError
    from bh_jax.training.train import check_resume

    not_a_folder = tmp_path / "w"
    not_a_folder.write_text("")
    with pytest.raises(CheckpointError, match=f"^{not_a_folder}: exists and is not a folder"):
        check_resume(not_a_folder, tiny_config)
    check_resume(tmp_path / "new", tiny_config)  # absent: a fresh run


def test_resumed_history_follows_the_checkpoint(tmp_path, tiny_config, tiny_slices):
    """A kill after metrics.json but before its checkpoint committed: the resumed
    history has each step once."""
    import shutil

    # The optimiser of test_resume_matches_uninterrupted (6 steps): its compiled step.
    config = tiny_config.replace(train={"steps": 6, "eval_every": 2, "batch_size": 8})
    one = jax.devices()[:1]
    workdir = tmp_path / "w"
    train(config, workdir, *tiny_slices, progress=False, stop_at=4, devices=one)
    for manager in ("latest", "best"):  # step 4's checkpoint never committed
        shutil.rmtree(workdir / manager / "4", ignore_errors=True)
    metrics = train(config, workdir, *tiny_slices, progress=False, devices=one)
    assert [h["step"] for h in metrics["history"]] == [0, 2, 4, 6]


def _loss_inputs(tiny_config, tiny_slices, **train):
    from bh_jax.training.state import make_loss

    config = tiny_config.replace(train=train)
    model = FlowModel(config.flow, config.data.height, config.data.width)
    slices = tiny_slices[0]
    batch = jnp.asarray(slices.slices[:8][..., None])
    masks = jnp.asarray(slices.masks[:8][..., None].astype(np.float32))
    params = model.init(jax.random.PRNGKey(0), batch)
    return jax.jit(make_loss(model, config.train)), model, params, batch, masks


def test_plain_loss_is_the_mean_bits_per_dim(tiny_config, tiny_slices):
    loss, model, params, batch, masks = _loss_inputs(tiny_config, tiny_slices)
    key = jax.random.PRNGKey(3)
    value, bpd = loss(params, batch, masks, key)
    expected = model.bits_per_dim(params, model.dequantize(key, batch))
    np.testing.assert_allclose(bpd, expected, rtol=1e-6)
    assert float(value) == pytest.approx(float(jnp.mean(expected)), rel=1e-6)


def test_contrast_hinges_add_weight_times_two_margins_at_factor_one(tiny_config, tiny_slices):
    """Factor 1: each negative is its slice with other dequantisation noise, so both
    hinges are active and each is the margin, up to that noise."""
    loss, _, params, batch, masks = _loss_inputs(
        tiny_config, tiny_slices, contrast_weight=2.0, contrast_margin=0.5,
        contrast_low=1.0, contrast_high=1.0)
    value, bpd = loss(params, batch, masks, jax.random.PRNGKey(3))
    assert float(value) == pytest.approx(float(jnp.mean(bpd)) + 2.0 * 2 * 0.5, abs=0.02)


def test_contrast_hinges_never_lower_the_loss(tiny_config, tiny_slices):
    """No margin: whatever the negatives score, a hinge is never negative, so the
    loss is at least the mean bits/dim."""
    loss, _, params, batch, masks = _loss_inputs(
        tiny_config, tiny_slices, contrast_weight=1.0, contrast_margin=0.0)
    for seed in range(3):
        value, bpd = loss(params, batch, masks, jax.random.PRNGKey(seed))
        assert float(value) >= float(jnp.mean(bpd)) - 1e-6


def test_contrast_factors_lie_either_side_of_one_in_the_range(tiny_config):
    from bh_jax.training.state import contrast_factors

    config = tiny_config.train
    factors = np.asarray(contrast_factors(jax.random.PRNGKey(0), 512, config)).ravel()
    size = np.abs(np.log(factors))
    assert size.min() >= np.log(config.contrast_low) - 1e-6
    assert size.max() <= np.log(config.contrast_high) + 1e-6
    assert 0.4 < np.mean(factors > 1) < 0.6


def test_bent_intensities_keep_the_ends_and_their_log_slope_is_the_curves():
    """g(0) = 0, g(1) = 1, g increasing, and the log2-slope sum equals that of g's
    derivative by jax.grad (independent of the closed form)."""
    from bh_jax.training.qc import bend_intensities

    x = jnp.linspace(0.0, 1.0, 64).reshape(1, 8, 8)
    mask = jnp.ones_like(x).at[0, 0, :4].set(0.0)
    for strength, frequency in ((0.3, 1.0), (-0.5, 2.0), (0.9, 3.0)):
        bent, log_slope = bend_intensities(x, mask, strength, frequency)
        inside = np.asarray(bent)[np.asarray(mask) > 0]
        assert np.all(np.diff(inside) > 0)
        np.testing.assert_allclose(np.asarray(bent)[0, 0, :4], np.asarray(x)[0, 0, :4])
        def g(v, s=strength, f=frequency):
            return bend_intensities(v.reshape(1, 1), jnp.ones((1, 1)), s, f)[0][0, 0]

        slopes = jax.vmap(jax.grad(g))(x.ravel()).reshape(x.shape)
        expected = float(jnp.sum(jnp.where(mask > 0, jnp.log2(slopes), 0.0)))
        assert float(log_slope[0]) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    ends = bend_intensities(jnp.array([[0.0, 1.0]]), jnp.ones((1, 2)), 0.7, 3.0)[0]
    np.testing.assert_allclose(ends, [[0.0, 1.0]], atol=1e-6)


def test_curve_hinge_is_zero_without_bending_and_never_lowers_the_loss(tiny_config,
                                                                       tiny_slices):
    """Strength 0: the bent copy is the image itself, so the hinge is exactly 0."""
    loss, _, params, batch, masks = _loss_inputs(tiny_config, tiny_slices, curve_weight=3.0,
                                                 curve_strength=0.0)
    value, bpd = loss(params, batch, masks, jax.random.PRNGKey(3))
    assert float(value) == pytest.approx(float(jnp.mean(bpd)), rel=1e-6)
    loss, _, params, batch, masks = _loss_inputs(tiny_config, tiny_slices, curve_weight=1.0,
                                                 curve_strength=0.5)
    values = [loss(params, batch, masks, jax.random.PRNGKey(seed)) for seed in range(3)]
    assert all(float(v) >= float(jnp.mean(b)) - 1e-6 for v, b in values)
    assert any(float(v) > float(jnp.mean(b)) + 1e-4 for v, b in values)


def test_a_curve_strength_that_would_fold_the_curve_is_refused(tiny_config):
    from bh_jax.training.state import make_loss

    config = tiny_config.replace(train={"curve_weight": 1.0, "curve_strength": 1.0})
    model = FlowModel(config.flow, config.data.height, config.data.width)
    with pytest.raises(ValueError, match="curve_strength"):
        make_loss(model, config.train)
