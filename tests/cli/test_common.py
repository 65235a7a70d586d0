"""What every command line shares: checked numbers, defaults in --help, one-line errors."""

import argparse
import errno
import os
import subprocess
import sys

import jax
import pytest

from bh_jax.cli import baselines as baselines_cli
from bh_jax.cli import bench, common, harmonize, phantom, train
from bh_jax.cli import pretrained as pretrained_cli

COMMANDS = {"bh-harmonize": harmonize.main, "bh-train": train.main, "bh-bench": bench.main,
            "bh-phantom": phantom.main, "bh-baselines": baselines_cli.main,
            "bh-pretrained": pretrained_cli.main}


@pytest.mark.parametrize("argv, option", [
    (["bh-harmonize", "x.nii.gz", "--checkpoint", "c", "--output-dir", "o", "--batch-size", "0"],
     "--batch-size"),
    (["bh-harmonize", "x.nii.gz", "--checkpoint", "c", "--output-dir", "o", "--batch-size", "-4"],
     "--batch-size"),
    (["bh-harmonize", "x.nii.gz", "--checkpoint", "c", "--output-dir", "o", "--steps", "-1"],
     "--steps"),
    (["bh-harmonize", "x.nii.gz", "--checkpoint", "c", "--output-dir", "o", "--alpha", "nan"],
     "--alpha"),
    (["bh-harmonize", "x.nii.gz", "--checkpoint", "c", "--output-dir", "o",
      "--calibration-pool", "0"], "--calibration-pool"),
    (["bh-train", "--data", "phantom", "--workdir", "w", "--steps", "0"], "--steps"),
    (["bh-train", "--data", "phantom", "--workdir", "w", "--batch-size", "0"], "--batch-size"),
    (["bh-train", "--data", "phantom", "--workdir", "w", "--learning-rate", "0"],
     "--learning-rate"),
    (["bh-bench", "harmonize", "--batch-size", "0"], "--batch-size"),
    (["bh-phantom", "--out", "o", "--val-subjects", "0"], "--val-subjects"),
    (["bh-baselines", "unet", "--workdir", "w", "--steps", "0"], "--steps"),
])
def test_numbers_are_checked_before_any_work(argv, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        COMMANDS[argv[0]](argv[1:])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: argument {option}: must be ") and err.count("\n") == 1
    assert not list(tmp_path.iterdir()), "nothing is written for refused arguments"


def _parsers():
    yield "bh-harmonize", harmonize.build_parser()
    for name, main in (("bh-train", train.main), ("bh-bench", bench.main),
                       ("bh-phantom", phantom.main), ("bh-baselines", baselines_cli.main)):
        parsers = []
        original = common.Parser.parse_args

        def capture(self, *args, **kwargs):
            parsers.append(self)
            raise SystemExit(0)

        common.Parser.parse_args = capture
        try:
            with pytest.raises(SystemExit):
                main(["--help"])
        finally:
            common.Parser.parse_args = original
        yield name, parsers[0]


def test_help_shows_every_default():
    for name, parser in _parsers():
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for each in [parser] + [p for s in subparsers for p in s.choices.values()]:
            text = each.format_help()
            for action in each._actions:
                if (action.option_strings and action.default not in (None, False,
                                                                     argparse.SUPPRESS)):
                    default = str(action.default)
                    assert f"default: {default}" in " ".join(text.split()), \
                        (name, action.option_strings, default)


def test_errors_a_user_can_act_on_are_one_line(capsys):
    def raising(err):
        def body():
            raise err
        return body

    for err, expected in [
            (ValueError("x.nii.gz: not a NIfTI file\nmore"), "error: x.nii.gz: not a NIfTI file\n"),
            (OSError(errno.ENOSPC, "No space left on device", "/out/a.nii.gz"),
             "error: /out/a.nii.gz: no space left on device\n"),
            (OSError(errno.EROFS, "Read-only file system", "/ro"),
             "error: /ro: read-only file system\n"),
            (jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9 bytes."),
             None)]:
        assert common.run(raising(err), batch_size=8) == 2
        err_text = capsys.readouterr().err
        if expected is None:
            assert err_text.startswith("error: out of memory with batches of 8 slices")
            assert "lower --batch-size" in err_text and err_text.count("\n") == 1
        else:
            assert err_text == expected
    assert common.run(raising(KeyboardInterrupt())) == 130  # Ctrl-C or a job's time limit
    err_text = capsys.readouterr().err
    assert err_text.startswith("interrupted: ") and err_text.count("\n") == 1
    with pytest.raises(KeyError):  # a bug keeps its traceback
        common.run(raising(KeyError("bug")))
    with pytest.raises(jax.errors.JaxRuntimeError, match="something else"):
        common.run(raising(jax.errors.JaxRuntimeError("INTERNAL: something else")))


def test_a_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="exists and is not a folder \\(--output-dir\\)"):
        common.writable_folder(tmp_path / "file", "--output-dir")
    assert common.writable_folder(tmp_path / "new" / "out", "--output-dir").is_dir()
    assert not list((tmp_path / "new" / "out").iterdir()), "the probe file is removed"

    # A read-only file system (chmod cannot show it: the tests may run as root).
    def read_only(self, data):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(type(tmp_path), "write_bytes", read_only)
    with pytest.raises(ValueError, match="out: cannot write there \\(--output-dir: "
                                         "read-only file system\\)"):
        common.writable_folder(tmp_path / "out", "--output-dir")


@pytest.mark.slow  # subprocesses
def test_every_console_script_is_installed_and_answers_help():
    import shutil
    import subprocess
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    assert set(scripts) >= set(COMMANDS)
    for name in scripts:
        path = shutil.which(name)
        assert path, f"{name} is not installed: pip install -e . first"
        result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: {name}")


@pytest.fixture
def cache_config():
    """The compilation cache's settings, restored after the test (nothing here
    compiles while they are changed)."""
    names = ("jax_compilation_cache_dir", "jax_enable_compilation_cache",
             "jax_compilation_cache_max_size")
    saved = {name: getattr(jax.config, name) for name in names}
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


def test_commands_keep_compiled_programs_in_the_users_cache_folder(
        cache_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_compilation_cache_max_size", -1)
    folder = str(tmp_path / "cache" / "bh_jax" / "xla")
    assert common.use_compilation_cache() == folder
    assert jax.config.jax_compilation_cache_dir == folder
    assert jax.config.jax_compilation_cache_max_size == common.COMPILATION_CACHE_BYTES
    # A folder the user set (JAX_COMPILATION_CACHE_DIR) is kept, with its own size.
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    jax.config.update("jax_compilation_cache_max_size", -1)
    assert common.use_compilation_cache() == str(tmp_path / "mine")
    assert jax.config.jax_compilation_cache_max_size == -1
    # A folder that cannot be written: one line, and no cache.
    jax.config.update("jax_compilation_cache_dir", None)
    (tmp_path / "a file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a file"))
    assert common.use_compilation_cache() is None
    assert not jax.config.jax_enable_compilation_cache
    assert capsys.readouterr().err.count("\n") == 1
    jax.config.update("jax_enable_compilation_cache", True)
    # JAX_ENABLE_COMPILATION_CACHE=false: none.
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_enable_compilation_cache", False)
    assert common.use_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None


def test_benchmarks_compile_for_real_unless_a_cache_is_asked_for(cache_config, tmp_path):
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_enable_compilation_cache", True)
    common.without_compilation_cache()
    assert not jax.config.jax_enable_compilation_cache
    assert common.use_compilation_cache() is None  # a command run inside it keeps that
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    jax.config.update("jax_enable_compilation_cache", True)
    common.without_compilation_cache()
    assert jax.config.jax_enable_compilation_cache


def test_every_command_runs_with_the_cache_and_benchmarks_without(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(common, "use_compilation_cache", lambda: calls.append("cache"))
    monkeypatch.setattr(common, "without_compilation_cache", lambda: calls.append("none"))
    from bh_jax.cli import report

    assert report.main([str(tmp_path)]) == 2  # no outputs there: fails in its body
    assert harmonize.main([str(tmp_path / "x.nii.gz"), "--checkpoint", str(tmp_path),
                           "--output-dir", str(tmp_path / "out")]) == 2
    assert bench.main(["harmonize", "--preset", "no-such-preset"]) == 2  # timed: none
    assert bench.main(["quality", "--checkpoint", str(tmp_path), "--out",
                       str(tmp_path / "q")]) == 2
    assert calls == ["cache", "cache", "none", "cache"]


@pytest.mark.slow
def test_compiled_programs_land_in_the_users_cache_folder(tmp_path):
    """In a process of its own, as a command line starts: no cache folder set."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    code = ("import jax, jax.numpy as jnp; from bh_jax.cli import common; "
            "common.use_compilation_cache(); "
            "jax.jit(lambda x: jnp.sin(x) @ x.T).lower(jnp.ones((8, 8))).compile()")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env)
    assert run.returncode == 0, run.stderr
    names = [p.name for p in (tmp_path / "bh_jax" / "xla").iterdir()]
    assert any(n.startswith("jit__lambda") and n.endswith("-cache") for n in names), names
