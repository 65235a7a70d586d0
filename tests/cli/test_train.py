"""bh-train (train.py): one-line errors and exit codes."""

import subprocess
import sys
from pathlib import Path

import jax
import nibabel as nib
import numpy as np
import pytest

import bh_jax.training.train
from bh_jax.cli import train as train_cli

ROOT = Path(__file__).resolve().parents[2]


def _run_train(*args):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "--preset", "tiny",
                           "--no-progress", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.mark.slow  # a subprocess
def test_cli_empty_folder(tmp_path):
    (tmp_path / "data").mkdir()
    result = _run_train("--data", tmp_path / "data", "--workdir", tmp_path / "w")
    assert result.returncode == 2
    assert f"{tmp_path / 'data'}: no NIfTI files" in result.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.slow  # a subprocess
def test_cli_image_smaller_than_model(tmp_path):
    (tmp_path / "data").mkdir()
    image = nib.Nifti1Image(np.ones((3, 3, 5), np.float32), np.eye(4))
    nib.save(image, str(tmp_path / "data" / "small.nii.gz"))
    result = _run_train("--data", tmp_path / "data", "--workdir", tmp_path / "w")
    assert result.returncode == 2
    assert "small.nii.gz: in-plane size" in result.stderr and "minimum 4x4" in result.stderr


@pytest.mark.slow  # a subprocess
def test_cli_config_mismatch_on_resume(tmp_path, trained, tiny_phantom):
    workdir, _, _ = trained
    folder, _ = tiny_phantom
    before = sorted(p.name for p in workdir.iterdir())
    result = _run_train("--data", "phantom", "--data-dir", folder, "--workdir", workdir,
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
