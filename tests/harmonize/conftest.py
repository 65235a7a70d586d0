"""Fixtures of the harmonization tests: the tiny trained flow and its test volumes."""

import pytest

from bh_jax.data.manifest import prepare_entry
from bh_jax.training.checkpoint import load_flow


@pytest.fixture(scope="module")
def flow(trained):
    return load_flow(trained[0])


@pytest.fixture(scope="module")
def volumes(tiny_phantom, flow):
    _, manifest = tiny_phantom
    entries = [e for e in manifest["images"] if e["split"] == "test" and e["site"] == "exp"]
    return [prepare_entry(e, flow.config.data) for e in entries]
