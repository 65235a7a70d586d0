"""Shared fixtures: the tiny built-in data set, a tiny trained flow and the three
learned baselines, each built once per test run and shared by the xdist workers."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys

# Tests run on the CPU, with 8 simulated devices for the sharding tests. Compiling
# dominates the suite (its programs are tiny and run for milliseconds), so LLVM
# compiles them without its optimisation passes: the suite's CPU time fell by about an
# eighth (1059 to 930 s from a clean clone, docs/development.md). XLA's own graph
# passes (fusion, simplification) still run; the library's programs are compiled as
# usual everywhere else.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# jax.random's default generator, threefry, is unrolled into every program that draws
# numbers, and XLA:CPU compiles it slowly: a U-net's init compiled in 13 s with it and in
# 2.2 s with "rbg" on a 2-core CI machine. The library draws through jax.random's API only
# (any generator); test_prng.py runs the default generator once. Reaches the command
# lines the tests start too (jax reads the variable at import).
os.environ.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")

import pytest  # noqa: E402

from bh_jax.config import get_preset  # noqa: E402


def pytest_sessionstart(session):
    """One persistent XLA compilation cache for the whole run, shared by the xdist
    workers and the command lines the tests start: many tests compile the same
    tiny programs. It starts empty with every run (pytest's temporary folder)."""
    root = session.config._tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(root / "jax-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    # This process imported jax (through bh_jax) before these were set: jax reads the
    # variables at import, so they reach only the command lines the tests start, unless
    # also set here (before the first compile).
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                      int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


@contextlib.contextmanager
def shared_folder(tmp_path_factory, name: str):
    """(folder, must_build): a folder shared by this run's xdist workers. The first
    worker to ask builds it while the others wait on a file lock; later ones reuse it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield folder, not done.exists()
            done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def small_volume():
    """A function of a seed: ([3, 8, 8] slices in [0.2, 0.8] inside a box mask, the masks)."""
    import numpy as np

    def make(seed=0):
        rng = np.random.default_rng(seed)
        masks = np.zeros((3, 8, 8), bool)
        masks[:, 2:6, 1:7] = True
        return np.where(masks, rng.uniform(0.2, 0.8, masks.shape), 0.0).astype(np.float32), masks

    return make


@pytest.fixture(scope="session")
def tiny_config():
    return get_preset("tiny")


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory, tiny_config):
    """(folder, manifest) of the tiny built-in data set."""
    from bh_jax.data.phantom import ensure_phantom

    with shared_folder(tmp_path_factory, "phantom") as (folder, _):
        manifest = ensure_phantom(folder, tiny_config.phantom, "tiny", progress=False)
    return folder, manifest


@pytest.fixture(scope="session")
def tiny_slices(tiny_phantom, tiny_config):
    from bh_jax.training.input_pipeline import phantom_slices

    folder, _ = tiny_phantom
    return phantom_slices(tiny_config, folder, progress=False)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_config, tiny_phantom):
    """(workdir, config, metrics) of a tiny flow trained for a few hundred steps."""
    config = tiny_config.replace(train={"steps": 240, "eval_every": 80})
    folder, _ = tiny_phantom
    with shared_folder(tmp_path_factory, "trained") as (workdir, build):
        if build:
            # train.py on one device, in its own process, compiled with LLVM's
            # optimisation passes: the 240 steps really run (31 s, against 54 s at the
            # tests' level 0).
            flags = os.environ["XLA_FLAGS"].replace("--xla_backend_optimization_level=0", "")
            flags = flags.replace("device_count=8", "device_count=1")
            run = subprocess.run([sys.executable, "-m", "bh_jax.cli.train", "--data", "phantom",
                                  "--data-dir", str(folder), "--preset", "tiny", "--workdir",
                                  str(workdir), "--steps", "240", "--set", "train.eval_every=80",
                                  "--no-progress"], capture_output=True, text=True,
                                 env={**os.environ, "XLA_FLAGS": flags})
            assert run.returncode == 0, run.stderr
    from bh_jax.training.checkpoint import read_config

    assert read_config(workdir) == config, "train.py trained another model than the tests expect"
    return workdir, config, json.loads((workdir / "metrics.json").read_text())


@pytest.fixture(scope="session")
def baselines(tiny_phantom, tiny_config, tmp_path_factory):
    """{kind: (folder, config, metrics)} of the three learned baselines."""
    from bh_jax.baselines.learned import BaselineConfig, train_baseline

    _, manifest = tiny_phantom
    out = {}
    with shared_folder(tmp_path_factory, "baselines") as (root, build):
        for kind in ("unet", "cyclegan", "segmenter"):
            config = BaselineConfig(kind, features=8, steps=50, batch_size=8)
            if build:
                train_baseline(config, tiny_config.data, manifest, root / kind, progress=False)
            out[kind] = (root / kind, config,
                         json.loads((root / kind / "metrics.json").read_text()))
    return out


@pytest.fixture
def run_main(capsys):
    """A command's `main` in this process, as `run_main(main, *args)` ->
    CompletedProcess(returncode, stdout, stderr). A subprocess costs about 3 s of
    imports and recompiles what this worker has compiled already; test_common's
    console-script test still runs the real commands."""

    def run(main, *args) -> subprocess.CompletedProcess:
        argv = [str(a) for a in args]
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse's errors
            code = stop.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, out, err)

    return run


@pytest.fixture
def harmonize_cli(run_main):
    """harmonize.py in this process: `harmonize_cli(*args)` (`run_main`)."""
    from bh_jax.cli import harmonize

    return lambda *args: run_main(harmonize.main, *args)
