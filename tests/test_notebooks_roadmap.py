"""The roadmap notebook runs top to bottom on a CPU and is committed without outputs."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "01_roadmap.ipynb"


def test_roadmap_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_roadmap_notebook_runs_top_to_bottom(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The "python3" kernel is ipykernel in this interpreter's environment; run it in a scratch folder.
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "25,557,032" in text and "28,589,128" in text  # the table: ResNet-50 and ConvNeXt-T sizes
    assert "7x7 depthwise conv 96->96, LN" in text  # the block diagram in words
    rich = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
    assert any("image/png" in o.data for o in rich)  # the chart
    assert any("img_per_s" in o.data.get("text/markdown", "") for o in rich)  # the throughput table
