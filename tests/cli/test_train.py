"""bh-train (train.py): one-line errors and exit codes."""

import errno
import json
from pathlib import Path

import jax
import nibabel as nib
import numpy as np
import pytest

import bh_jax.training.checkpoint
import bh_jax.training.train
from bh_jax.cli import train as train_cli
from bh_jax.training.checkpoint import load_flow


@pytest.fixture
def run_train(run_main):
    """train.py --preset tiny in this process: `run_train(*args)` (`run_main`)."""
    return lambda *args: run_main(train_cli.main, "--preset", "tiny", "--no-progress", *args)


@pytest.mark.parametrize("data, extra, message", [
    ("phantom", ["--set", "train.nonsense=1"], "nonsense"),
    ("phantom", ["--voxel-size", "2"], "--voxel-size is for --data FOLDER"),
    ("folder", ["--voxel-size", "50"], "--voxel-size must be at most"),
    ("folder", ["--train-subjects", "9"], "--train-subjects is for --data phantom"),
    ("phantom", ["--train-subjects", "1"],
     "--train-subjects must be at least the preset's 4, got 1"),
])
def test_cli_options_that_do_not_fit_are_one_line_before_any_work(tmp_path, run_train, data,
                                                                  extra, message):
    source = tmp_path / "scans"
    source.mkdir()
    result = run_train("--data", "phantom" if data == "phantom" else source,
                       "--workdir", tmp_path / "w", *extra)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert not (tmp_path / "w").exists()


def test_cli_empty_folder(tmp_path, run_train):
    (tmp_path / "data").mkdir()
    result = run_train("--data", tmp_path / "data", "--workdir", tmp_path / "w")
    assert result.returncode == 2
    assert f"{tmp_path / 'data'}: no NIfTI files" in result.stderr
    assert not (tmp_path / "w").exists()


def test_cli_image_smaller_than_model(tmp_path, run_train):
    (tmp_path / "data").mkdir()
    data = np.random.default_rng(0).uniform(1.0, 2.0, (3, 3, 5)).astype(np.float32)
    image = nib.Nifti1Image(data, np.diag([6.0, 6.0, 6.0, 1.0]))  # on the tiny prior's grid
    nib.save(image, str(tmp_path / "data" / "small.nii.gz"))
    result = run_train("--data", tmp_path / "data", "--workdir", tmp_path / "w")
    assert result.returncode == 2
    assert "small.nii.gz: in-plane size" in result.stderr and "minimum 4x4" in result.stderr


def test_cli_config_mismatch_on_resume(tmp_path, trained, tiny_phantom, run_train):
    workdir, _, _ = trained
    folder, _ = tiny_phantom
    before = sorted(p.name for p in workdir.iterdir())
    result = run_train("--data", "phantom", "--data-dir", folder, "--workdir", workdir,
                        "--steps", "5", "--preset", "demo")
    assert result.returncode == 2
    assert str(workdir) in result.stderr and "different model" in result.stderr
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_cli_out_of_memory_is_one_clear_line(tmp_path, tiny_phantom, monkeypatch, capsys):
    def exhausted(*_, **__):
        raise jax.errors.JaxRuntimeError(
            "INTERNAL: Error dispatching computation: Out of memory allocating 166143099008 bytes.")

    monkeypatch.setattr(bh_jax.training.train, "train", exhausted)
    folder, _ = tiny_phantom
    status = train_cli.main(["--data", "phantom", "--data-dir", str(folder), "--preset", "tiny",
                             "--workdir", str(tmp_path / "w"), "--batch-size", "8",
                             "--no-progress"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory with batches of 8 slices") and err.count("\n") == 1
    assert "lower --batch-size" in err


def test_cli_stops_at_its_time_limit_and_says_it_resumes_on_its_first_line(
        tmp_path, tiny_phantom, capsys):
    folder, _ = tiny_phantom
    args = ["--data", "phantom", "--data-dir", str(folder), "--preset", "tiny",
            "--workdir", str(tmp_path / "w"), "--batch-size", "8", "--no-progress",
            "--steps", "3"]
    assert train_cli.main([*args, "--time-limit", "1e-6"]) == 0  # one step, then stop
    out = capsys.readouterr().out
    assert not out.startswith("resuming")
    assert "stopped at step 1 of 3 after the 1e-06-minute limit; run the same command" in out
    assert train_cli.main([*args, "--time-limit", "1e-6"]) == 0  # (unfinished: quicker)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"resuming from step 1 of 3 in {tmp_path / 'w'}"
    assert any(line.startswith("stopped at step 2 of 3") for line in lines)


@pytest.mark.parametrize("code, reason", [(errno.EROFS, "read-only file system"),
                                          (errno.ENOSPC, "no space left on device")])
def test_cli_unwritable_workdir_is_one_line(tmp_path, tiny_phantom, monkeypatch, capsys,
                                            code, reason):
    """A read-only --workdir, or a disk that fills up while writing: one line, exit 2
    (chmod cannot show it: the tests may run as root)."""
    import bh_jax.io

    def refused(path, *_, **__):
        raise OSError(code, "refused", str(path))

    monkeypatch.setattr(bh_jax.io, "write_json_atomic", refused)
    monkeypatch.setattr(bh_jax.training.checkpoint, "write_json_atomic", refused)
    folder, _ = tiny_phantom
    status = train_cli.main(["--data", "phantom", "--data-dir", str(folder), "--preset", "tiny",
                             "--workdir", str(tmp_path / "w"), "--steps", "2",
                             "--batch-size", "8", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert err == f"error: {tmp_path / 'w' / 'config.json'}: {reason}\n"


def test_finer_target_scans_train_on_the_presets_grid(tmp_path, tiny_phantom, tiny_config,
                                                      capsys):
    """Target scans at 2 mm (and their masks) train the tiny preset on its 6 mm grid,
    or on another grid with --voxel-size."""
    from nibabel import processing

    from bh_jax.training.input_pipeline import folder_slices

    _, manifest = tiny_phantom
    entries = [e for e in manifest["images"]
               if e["site"] == manifest["target_site"] and e["split"] == "train"][:2]
    (tmp_path / "data").mkdir(), (tmp_path / "masks").mkdir()
    for entry in entries:
        name = Path(entry["path"]).name
        for key, folder, order in (("path", "data", 1), ("mask", "masks", 0)):
            image = nib.load(entry[key])
            image = nib.Nifti1Image(image.get_fdata().astype(np.float32), image.affine)
            fine = processing.resample_to_output(image, voxel_sizes=(2.0, 2.0, 2.0), order=order)
            nib.save(fine, str(tmp_path / folder / name))
    coarse = nib.load(entries[0]["path"]).shape
    train_set, _ = folder_slices(tmp_path / "data", tiny_config, tmp_path / "masks")
    assert train_set.slices.shape[1:] == (tiny_config.data.height, tiny_config.data.width)
    np.testing.assert_allclose(train_set.voxel_mm, [6.0, 6.0, 6.0])
    assert len(train_set) <= coarse[2] + 1  # 6 mm slices, not the 2 mm ones
    finer_grid = tiny_config.replace(data={"voxel_mm": 5.0, "height": 48, "width": 48})
    other, _ = folder_slices(tmp_path / "data", finer_grid, tmp_path / "masks")
    np.testing.assert_allclose(other.voxel_mm, [5.0, 5.0, 5.0])
    assert len(other) > len(train_set)
    assert train_cli.main(["--data", "phantom", "--workdir", str(tmp_path / "w"),
                           "--voxel-size", "2"]) == 2
    assert "--voxel-size is for --data FOLDER" in capsys.readouterr().err


def test_cli_disk_full_while_checkpointing_is_one_line(tmp_path, tiny_phantom, monkeypatch,
                                                       capsys):
    """The disk is full when the first checkpoint is due: one line naming it, exit 2,
    before orbax starts writing (its threads print hundreds of lines when the disk
    fills midway; seen on a 600 KB tmpfs, docs/development.md)."""
    import shutil

    free = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(bh_jax.training.checkpoint.shutil, "disk_usage",
                        lambda _: free._replace(free=100_000))
    folder, _ = tiny_phantom
    status = train_cli.main(["--data", "phantom", "--data-dir", str(folder), "--preset", "tiny",
                             "--workdir", str(tmp_path / "w"), "--steps", "3",
                             "--batch-size", "8", "--no-progress"])  # the time-limit test's
    err = capsys.readouterr().err
    where = tmp_path / "w" / "latest" / "3"
    assert status == 2 and err == f"error: {where}: no space left on device\n"


def test_cli_init_from_starts_at_the_trained_prior(tmp_path, trained, tiny_phantom, run_train):
    workdir, _, metrics = trained
    folder, _ = tiny_phantom
    result = run_train("--data", "phantom", "--data-dir", folder, "--workdir", tmp_path / "w",
                       "--init-from", workdir, "--steps", "2", "--learning-rate", "1e-5",
                       "--set", "train.eval_every=2", "--set", "train.contrast_weight=1")
    assert result.returncode == 0, result.stderr
    assert f"starting from {workdir}" in result.stdout
    tuned = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert tuned["initialised_from"] == str(workdir)
    start = tuned["history"][0]
    assert start["step"] == 0
    assert start["val_bpd"] == pytest.approx(metrics["best_val_bpd"], rel=1e-4)


def test_cli_init_from_accepts_another_dequantisation_depth(tmp_path, trained, tiny_phantom,
                                                            run_train):
    workdir, _, _ = trained
    folder, _ = tiny_phantom
    result = run_train("--data", "phantom", "--data-dir", folder, "--workdir", tmp_path / "w",
                       "--init-from", workdir, "--steps", "1", "--learning-rate", "1e-5",
                       "--set", "train.eval_every=1", "--set", "flow.num_bits=8")
    assert result.returncode == 0, result.stderr
    start, tuned = load_flow(workdir), load_flow(tmp_path / "w")
    assert tuned.config.flow.num_bits == 8 and start.config.flow.num_bits != 8
    moved = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))),
                                   start.params, tuned.params)
    assert max(jax.tree_util.tree_leaves(moved)) < 1e-3  # one step at 1e-5 from the start


def test_cli_init_from_another_model_is_refused(tmp_path, trained, tiny_phantom, run_train):
    workdir, _, _ = trained
    folder, _ = tiny_phantom
    result = run_train("--data", "phantom", "--data-dir", folder, "--workdir", tmp_path / "w",
                       "--init-from", workdir, "--steps", "2", "--set", "flow.hidden=8")
    assert result.returncode == 2
    assert f"{workdir}: --init-from holds a different model" in result.stderr
    assert not (tmp_path / "w" / "metrics.json").exists()
