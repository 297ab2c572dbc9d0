"""Style the tools enforce: ruff over the repository (notebooks included) and notebooks committed
without outputs.

The ruff rules live in ``pyproject.toml`` (``[tool.ruff]``); ``make lint`` runs the same checks.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from lib.config import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
# metadata that executing a notebook leaves behind (papermill, JupyterLab's cell timing)
RUN_METADATA = ("papermill", "execution")


def notebook_output_problems(path: str | Path) -> list[str]:
    """What in a notebook shows that it was committed after running.

    Parameters
    ----------
    path : path-like
        The ``.ipynb`` file.

    Returns
    -------
    problems : list of str
        One line per problem, naming the notebook and the cell (its index from 0 and its id):
        a code cell with outputs or an execution count, or papermill / execution metadata in the
        notebook or a cell. Empty for a clean notebook.
    """
    path = Path(path)
    nb = json.loads(path.read_text(encoding="utf-8"))
    problems = [f"{path.name}: notebook metadata has {key!r} (left by a run)"
                for key in RUN_METADATA if key in nb.get("metadata", {})]
    for i, cell in enumerate(nb.get("cells", [])):
        where = f"{path.name}: cell {i} (id {cell.get('id', '?')})"
        if cell.get("outputs"):
            problems.append(f"{where} has {len(cell['outputs'])} output(s)")
        if cell.get("execution_count") is not None:
            problems.append(f"{where} has execution_count {cell['execution_count']}")
        problems += [f"{where}: cell metadata has {key!r} (left by a run)"
                     for key in RUN_METADATA if key in cell.get("metadata", {})]
    return problems


def test_ruff_is_clean():
    if importlib.util.find_spec("ruff") is None:
        pytest.fail(f"ruff is not installed for {sys.executable}; it is part of the dev extra: "
                    "pip install -e '.[dev]' (`make setup` does it)")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, (
        "ruff check found problems (`.venv/bin/ruff check --fix .` fixes the fixable ones):\n"
        f"{proc.stdout}{proc.stderr}")


def test_there_are_notebooks_to_check():
    assert len(NOTEBOOKS) >= 8, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_committed_without_outputs(notebook):
    problems = notebook_output_problems(notebook)
    assert not problems, (
        "notebooks are committed without outputs; clear them (JupyterLab: Edit > Clear Outputs of "
        "All Cells, then save; or `jupyter nbconvert --clear-output --inplace` for the file):\n"
        + "\n".join(problems))


def test_output_check_names_each_problem(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# title"),
                nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell("print(x)")]
    clean = tmp_path / "clean.ipynb"
    nbformat.write(nb, clean)
    assert notebook_output_problems(clean) == []

    ran = nb.cells[2]
    ran.execution_count = 3
    ran.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    ran.metadata["papermill"] = {"duration": 0.1}
    nb.metadata["papermill"] = {"parameters": {}}
    dirty = tmp_path / "dirty.ipynb"
    nbformat.write(nb, dirty)
    problems = notebook_output_problems(dirty)
    assert len(problems) == 4, problems
    assert all(p.startswith("dirty.ipynb: ") for p in problems)
    assert sum(f"cell 2 (id {ran.id})" in p for p in problems) == 3
    assert any("1 output(s)" in p for p in problems)
    assert any("execution_count 3" in p for p in problems)
    assert any("notebook metadata has 'papermill'" in p for p in problems)

    # an output alone (execution count cleared) is still reported
    ran.execution_count = None
    del ran.metadata["papermill"], nb.metadata["papermill"]
    nbformat.write(nb, dirty)
    assert notebook_output_problems(dirty) == [f"dirty.ipynb: cell 2 (id {ran.id}) has 1 output(s)"]
