"""The roadmap notebook runs top to bottom on a CPU and is committed without outputs."""

import pytest
from helpers import NOTEBOOKS
from helpers.notebooks import code_cells, execute_notebook, rich_outputs, stream_text

NOTEBOOK = NOTEBOOKS / "01_roadmap.ipynb"


def test_roadmap_notebook_is_committed_without_outputs():
    code = code_cells(NOTEBOOK)
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_roadmap_notebook_runs_top_to_bottom(tmp_path):
    # The throughput table on one image, timed once (the notebook's 8 images, 3 times, spend 16 s there).
    outputs, _ = execute_notebook(NOTEBOOK, tmp_path, parameters=dict(BATCH_SIZE=1, ITERS=1))
    text = stream_text(outputs)
    assert "25,557,032" in text and "28,589,128" in text  # the table: ResNet-50 and ConvNeXt-T sizes
    assert "7x7 depthwise conv 96->96, LN" in text  # the block diagram in words
    rich = rich_outputs(outputs)
    assert any("image/png" in o.data for o in rich)  # the chart
    assert any("img_per_s" in o.data.get("text/markdown", "") for o in rich)  # the throughput table
