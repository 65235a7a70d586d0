"""The demo (harmonize.py --demo) machinery, on the tiny checkpoint and data set."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bh_jax.experiments.demo import DEMO_SITES, run_demo
from bh_jax.experiments.evaluate import NYUL_PER_SITE, TYPICAL
from bh_jax.harmonize import CalibrationConfig, SolverConfig

pytestmark = pytest.mark.slow  # benchmark
QUICK_CALIBRATION = CalibrationConfig(steps=2, pool=8, field_steps=2)


def test_demo_writes_outputs_figure_and_table(trained, tiny_phantom, tmp_path):
    folder, manifest = tiny_phantom
    result = run_demo(tmp_path / "out", data_dir=folder, checkpoint=trained[0], subjects=1,
                      settings=SolverConfig(steps=2, calibration=QUICK_CALIBRATION),
                      batch_size=8, progress=False)
    assert result["subjects"] == 1
    assert set(result["results"]) == set(DEMO_SITES)
    for site in DEMO_SITES:
        scores = result["results"][site]
        assert list(scores) == ["Source", "HM", "Nyul", NYUL_PER_SITE, "SSIMH", "BlindHarmony",
                                TYPICAL]
        assert all(np.isfinite(s["psnr"]) and 0 < s["ssim"] <= 1 for s in scores.values())
    assert "| BlindHarmony |" in result["table"]
    assert len(result["outputs"]) == len(DEMO_SITES)
    assert (tmp_path / "out" / "demo.png").stat().st_size > 0
    page = result["report"].read_text()  # one figure per output, every input named
    assert page.count("data:image/png;base64,") >= len(DEMO_SITES)
    assert all(f"{Path(p).name.replace('_harmonized.nii.gz', '')}" in page
               for p in result["outputs"])
    first = next(e for e in manifest["images"] if e["split"] == "test" and e["site"] == "exp")
    output = nib.load(tmp_path / "out" / Path(first["path"]).name.replace(
        ".nii.gz", "_harmonized.nii.gz"))
    source = nib.load(first["path"])
    assert output.shape == source.shape
    np.testing.assert_array_equal(output.affine, source.affine)


def test_demo_refuses_input_files(harmonize_cli):
    run = harmonize_cli("--demo", "a.nii.gz")
    assert run.returncode == 2 and "--demo takes no INPUT files" in run.stderr


def test_demo_refuses_another_method(harmonize_cli):
    run = harmonize_cli("--demo", "--method", "nyul")
    assert run.returncode == 2 and "it takes no --method" in run.stderr


def test_without_demo_inputs_and_checkpoint_are_required(harmonize_cli):
    run = harmonize_cli("a.nii.gz")
    assert run.returncode == 2 and "--checkpoint and --output-dir are required" in run.stderr


def test_demo_and_files_default_to_the_curve_solver_one_curve_per_site():
    from bh_jax.cli import harmonize

    args = harmonize.parse_args(["--demo"])
    assert args.solver == "curve" and args.demo_subjects is None
    assert harmonize.parse_args(["--demo", "--solver", "latent"]).solver == "latent"
    files = harmonize.parse_args(["a.nii.gz", "--checkpoint", "c", "--output-dir", "o"])
    assert files.solver == "curve" and files.sites == "folder"
    settings = harmonize.solver_settings(files)
    assert settings == SolverConfig() and settings.calibration.shared
    assert not harmonize.solver_settings(harmonize.parse_args(
        ["a.nii.gz", "--checkpoint", "c", "--output-dir", "o", "--sites", "each"])
    ).calibration.shared


def test_demo_subjects_is_checked(trained, tmp_path, harmonize_cli):
    run = harmonize_cli("a.nii.gz", "--checkpoint", "c", "--output-dir", "o",
                        "--demo-subjects", "2")
    assert run.returncode == 2 and "--demo-subjects is a --demo option" in run.stderr
    with pytest.raises(ValueError, match="at least 1 subject"):
        run_demo(tmp_path / "out", checkpoint=trained[0], subjects=0, progress=False)
