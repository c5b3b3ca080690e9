"""The example notebook (examples/grid.ipynb) runs cell by cell in a real Jupyter kernel, on the small
dataset and the narrow network, and shows the report inline."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import NARROW_ENV

NOTEBOOK = Path(__file__).parent.parent / "examples" / "grid.ipynb"


@pytest.mark.slow
def test_the_example_notebook_runs_and_shows_what_the_grid_taught(small_data, tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source += f"\ndata_dir = {str(small_data)!r}\nepochs = 1\n"  # the small set, one epoch
    for key, value in NARROW_ENV.items():
        monkeypatch.setenv(key, value)  # the kernel is a subprocess: the narrow network
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = [o["data"]["text/html"] for o in outputs if o.output_type == "execute_result" and "text/html" in o["data"]]
    assert len(shown) == 1 and "What the grid taught" in shown[0] and "data:image/png;base64," in shown[0]
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "- Best configuration (mean validation accuracy over 2 runs)" in printed
    assert "lr (" in printed
    assert (tmp_path / "runs" / "notebook" / "report" / "index.html").exists()
    assert os.environ.get("NARROW_HIDDEN") == NARROW_ENV["NARROW_HIDDEN"]
