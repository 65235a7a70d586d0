"""bh-baselines: one-line errors."""

import jax

import bh_jax.baselines.learned
from bh_jax.cli import baselines as cli


def test_cli_clear_errors_for_a_file_as_workdir_and_out_of_memory(tiny_phantom, tmp_path,
                                                                  monkeypatch, capsys):
    folder, _ = tiny_phantom
    args = ["unet", "--preset", "tiny", "--data-dir", str(folder), "--batch-size", "8",
            "--no-progress", "--workdir"]
    (tmp_path / "file").write_text("")
    assert cli.main(args + [str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'file'}: exists and is not a folder (--workdir)\n"

    def exhausted(*_, **__):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9 bytes.")

    monkeypatch.setattr(bh_jax.baselines.learned, "train_baseline", exhausted)
    assert cli.main(args + [str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory with batches of 8 slices") and err.count("\n") == 1
