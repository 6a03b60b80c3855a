"""Executing the repository's notebooks top to bottom in a Jupyter kernel, and reading their outputs."""

import json
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

SUMMARY_MARKER = "NOTEBOOK_SUMMARY "


def code_cells(path: Path) -> list:
    return [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def execute_notebook(
    path: Path, workdir: Path, summary: str | None = None, parameters: dict | None = None
) -> tuple[list, dict | None]:
    """Run the notebook in ``workdir`` (kernel "python3": ipykernel of this interpreter's environment) and
    fail on any error output; return every code cell's outputs.

    ``summary`` (an expression over the notebook's variables) is printed as JSON by one extra cell appended at
    the end, and returned parsed as the second value (None without ``summary``).

    ``parameters`` (name: value) are assigned by one extra cell after the notebook's cell tagged "parameters", as
    papermill does: a user runs the notebook's full sizes, the suite the same cells on smaller ones.
    """
    notebook = nbformat.read(path, as_version=4)
    if parameters:
        _set_parameters(notebook, parameters, path.name)
    if summary is not None:
        notebook.cells.append(
            nbformat.v4.new_code_cell(f"import json\nprint({SUMMARY_MARKER!r} + json.dumps({summary}))")
        )
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if summary is None:
        return outputs, None
    line = next(line for line in stream_text(outputs).splitlines() if line.startswith(SUMMARY_MARKER))
    return outputs, json.loads(line.removeprefix(SUMMARY_MARKER))


def _set_parameters(notebook, parameters: dict, name: str) -> None:
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} needs one cell tagged 'parameters', has {len(tagged)}"
    defaults = notebook.cells[tagged[0]].source
    # A name the cell does not assign is read nowhere: the run would silently keep the full sizes.
    unknown = [key for key in parameters if not re.search(rf"^{key} = ", defaults, re.MULTILINE)]
    assert not unknown, f"{name}'s parameters cell does not assign {unknown}"
    assignments = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    notebook.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(assignments))


def stream_text(outputs: list) -> str:
    """Everything the cells printed (stdout and stderr streams), concatenated."""
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


def rich_outputs(outputs: list) -> list:
    """The displayed objects (figures, tables): ``display_data`` and ``execute_result`` outputs."""
    return [o for o in outputs if o.output_type in ("display_data", "execute_result")]


def png_count(outputs: list) -> int:
    return sum("image/png" in o.get("data", {}) for o in rich_outputs(outputs))
