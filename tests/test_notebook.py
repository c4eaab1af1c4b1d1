"""notebooks/explore.ipynb runs top to bottom in a fresh kernel, and is kept in git without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore.ipynb"


def test_notebook_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), \
        "strip the outputs before committing (Jupyter: Edit > Clear outputs of all cells)"


def test_notebook_runs_top_to_bottom() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "local S3 endpoint: http://127.0.0.1:" in text and "16 objects" in text and "80 members" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2, "the image grid and the throughput plot"
