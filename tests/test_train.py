"""Training: learning, exact resume, sharding equivalence, clear errors."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from bh_jax.checkpoint import load_flow
from bh_jax.flows.model import FlowModel
from bh_jax.sharding import data_mesh, replicate, shard_batch
from bh_jax.train import create_state, make_train_step, train

ROOT = Path(__file__).resolve().parents[1]


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
    one-device ones (the property data parallelism needs), and so does the
    step's result."""
    assert jax.device_count() == 8, "conftest sets 8 simulated CPU devices"
    config = tiny_config.replace(train={"batch_size": 8, "warmup_steps": 0})
    model = FlowModel(config.flow, config.data.height, config.data.width)
    batch = tiny_slices[0].slices[:8][..., None]
    state = create_state(model, config.train, jax.random.PRNGKey(0), jnp.asarray(batch))
    step = make_train_step(model, config.train)
    loss = jax.jit(jax.value_and_grad(lambda p, x: jnp.mean(model.bits_per_dim(p, x))))
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = data_mesh(devices)
        params, sharded = replicate(mesh, state["params"]), shard_batch(mesh, batch)
        value, grads = loss(params, sharded)
        _, bpd = step(replicate(mesh, state), sharded, jax.random.PRNGKey(1))
        results.append((float(value), grads, float(bpd)))
    (value_1, grads_1, bpd_1), (value_8, grads_8, bpd_8) = results
    assert value_8 == pytest.approx(value_1, rel=1e-6)
    assert bpd_8 == pytest.approx(bpd_1, rel=1e-6)
    for x, y in zip(jax.tree_util.tree_leaves(grads_1), jax.tree_util.tree_leaves(grads_8)):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)


def _run_train(*args):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "--preset", "tiny",
                           "--no-progress", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_cli_empty_folder(tmp_path):
    (tmp_path / "data").mkdir()
    result = _run_train("--data", tmp_path / "data", "--workdir", tmp_path / "w")
    assert result.returncode == 2
    assert f"{tmp_path / 'data'}: no NIfTI files" in result.stderr
    assert not (tmp_path / "w").exists()


def test_cli_image_smaller_than_model(tmp_path):
    (tmp_path / "data").mkdir()
    image = nib.Nifti1Image(np.ones((3, 3, 5), np.float32), np.eye(4))
    nib.save(image, str(tmp_path / "data" / "small.nii.gz"))
    result = _run_train("--data", tmp_path / "data", "--workdir", tmp_path / "w")
    assert result.returncode == 2
    assert "small.nii.gz: in-plane size" in result.stderr and "minimum 4x4" in result.stderr


def test_cli_config_mismatch_on_resume(tmp_path, trained, tiny_phantom):
    workdir, _, _ = trained
    folder, _ = tiny_phantom
    before = sorted(p.name for p in workdir.iterdir())
    result = _run_train("--data", "phantom", "--data-dir", folder, "--workdir", workdir,
                        "--steps", "5", "--preset", "demo")
    assert result.returncode == 2
    assert str(workdir) in result.stderr and "different model" in result.stderr
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_check_resume_refuses_a_file_as_workdir(tmp_path, tiny_config):
    from bh_jax.checkpoint import CheckpointError
    from bh_jax.train import check_resume

    not_a_folder = tmp_path / "w"
    not_a_folder.write_text("")
    with pytest.raises(CheckpointError, match=f"^{not_a_folder}: exists and is not a folder"):
        check_resume(not_a_folder, tiny_config)
    check_resume(tmp_path / "new", tiny_config)  # absent: a fresh run


def test_cli_out_of_memory_is_one_clear_line(tmp_path, tiny_phantom, monkeypatch, capsys):
    import bh_jax.train
    import train as train_cli

    def exhausted(*_, **__):
        raise jax.errors.JaxRuntimeError(
            "INTERNAL: Error dispatching computation: Out of memory allocating 166143099008 bytes.")

    monkeypatch.setattr(bh_jax.train, "train", exhausted)
    folder, _ = tiny_phantom
    status = train_cli.main(["--data", "phantom", "--data-dir", str(folder), "--preset", "tiny",
                             "--workdir", str(tmp_path / "w"), "--batch-size", "8",
                             "--no-progress"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory with batches of 8 slices") and err.count("\n") == 1
    assert "lower --batch-size" in err
