"""notebooks/explore.ipynb runs top to bottom (tiny setting), so it cannot rot."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # notebook

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore.ipynb"


def test_explore_notebook_runs(tiny_phantom, trained, monkeypatch):
    folder, _ = tiny_phantom
    monkeypatch.setenv("BH_NOTEBOOK_CHECKPOINT", str(trained[0]))
    monkeypatch.setenv("BH_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("BH_NOTEBOOK_DATA", str(folder))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert re.search(r"BlindHarmony\s+PSNR", text) and "b1=1.0" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4
