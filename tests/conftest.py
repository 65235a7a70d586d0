"""Shared fixtures: the tiny built-in data set, generated once per test session."""

from __future__ import annotations

import os

# Tests run on the CPU, with 8 simulated devices for the sharding tests.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from bh_jax.config import get_preset  # noqa: E402
from bh_jax.data import phantom  # noqa: E402


@pytest.fixture(scope="session")
def tiny_config():
    return get_preset("tiny")


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory, tiny_config):
    """(folder, manifest) of the tiny built-in data set."""
    folder = tmp_path_factory.mktemp("phantom")
    manifest = phantom.ensure_phantom(folder, tiny_config.phantom, "tiny", progress=False)
    return folder, manifest


@pytest.fixture(scope="session")
def tiny_slices(tiny_phantom, tiny_config):
    from bh_jax.input_pipeline import phantom_slices

    folder, _ = tiny_phantom
    return phantom_slices(tiny_config, folder, progress=False)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_config, tiny_slices):
    """(workdir, config, metrics) of a tiny flow trained for a few hundred steps."""
    import jax

    from bh_jax.train import train

    workdir = tmp_path_factory.mktemp("trained")
    config = tiny_config.replace(train={"steps": 240, "eval_every": 80})
    metrics = train(config, workdir, *tiny_slices, progress=False, devices=jax.devices()[:1])
    return workdir, config, metrics
