"""Style the tools enforce: ruff over the repository (notebooks included), notebooks committed
without outputs, and `lib`'s size aims (modules, functions, parameters) or a written reason.

The ruff rules live in ``pyproject.toml`` (``[tool.ruff]``); ``make lint`` runs the same checks.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from lib.config import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
#: Size aims of `lib` (lib/README.md): lines per module, lines per function, parameters per
#: public function. Past one, a module's docstring has a paragraph starting "Size:", a
#: function a "# size:" comment right above its ``def`` (or its decorators).
MODULE_LINES, FUNCTION_LINES, PUBLIC_PARAMETERS = 400, 60, 8
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


def size_problems(path: str | Path) -> list[str]:
    """Where a module of `lib` passes the size aims without a written reason.

    Parameters
    ----------
    path : path-like
        A ``.py`` file.

    Returns
    -------
    problems : list of str
        One line per module over :data:`MODULE_LINES` lines without a "Size:" paragraph in its
        docstring, and per function over :data:`FUNCTION_LINES` lines or (public) over
        :data:`PUBLIC_PARAMETERS` parameters without a "# size:" comment above it. A comment
        that states "N lines" or "N parameters" must state the current count.
    """
    path = Path(path)
    name = str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else path.name
    source = path.read_text(encoding="utf-8")
    lines, tree = source.splitlines(), ast.parse(source)
    problems = []
    if len(lines) > MODULE_LINES and "\nSize:" not in "\n" + (ast.get_docstring(tree) or ""):
        problems.append(f"{name}: {len(lines)} lines, no 'Size:' paragraph in its docstring")
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        a = node.args
        names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
        n_params = len(names) - (names[:1] in (["self"], ["cls"]))
        n_lines = node.end_lineno - node.lineno + 1
        over = {"lines": n_lines} if n_lines > FUNCTION_LINES else {}
        if not node.name.startswith("_") and n_params > PUBLIC_PARAMETERS:
            over["parameters"] = n_params
        if not over:
            continue
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        above = []
        for line in reversed(lines[: first - 1]):
            if not line.strip().startswith("#"):
                break
            above.insert(0, line.strip())
        note = " ".join(above)
        where = f"{name}:{node.lineno} {node.name}"
        if "# size:" not in note:
            problems.append(f"{where}: " + ", ".join(f"{v} {k}" for k, v in over.items())
                            + ", no '# size:' comment above it")
        for count, unit in re.findall(r"(\d+) (lines|parameters)\b", note.split("# size:")[-1])[:1]:
            actual = n_lines if unit == "lines" else n_params
            if int(count) != actual:
                problems.append(f"{where}: its '# size:' comment says {count} {unit}, "
                                f"it has {actual}")
    return problems


def test_lib_keeps_its_size_aims_or_says_why():
    problems = [p for path in sorted((REPO_ROOT / "lib").rglob("*.py"))
                for p in size_problems(path)]
    assert not problems, (
        f"lib's size aims (modules <= {MODULE_LINES} lines, functions <= {FUNCTION_LINES} lines, "
        f"public functions <= {PUBLIC_PARAMETERS} parameters) passed without a reason; split "
        "the code, or write why next to it:\n" + "\n".join(problems))


def test_size_check_finds_a_long_function_and_a_stale_note(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(FUNCTION_LINES))
    path = tmp_path / "m.py"
    path.write_text(f"def long():\n{body}\n\ndef f(a, b, c, d, e, f, g, h, i):\n    pass\n")
    assert [p.split(": ", 1)[1] for p in size_problems(path)] == [
        f"{FUNCTION_LINES + 1} lines, no '# size:' comment above it",
        "9 parameters, no '# size:' comment above it"]
    path.write_text(f"# size: {FUNCTION_LINES + 1} lines, a table.\ndef long():\n{body}\n\n"
                    "# size: 8 parameters.\ndef f(a, b, c, d, e, f, g, h, i):\n    pass\n")
    assert [p.split(": ", 1)[1] for p in size_problems(path)] == [
        "its '# size:' comment says 8 parameters, it has 9"]
    lines = "".join(f"x{i} = {i}\n" for i in range(MODULE_LINES))
    path.write_text(f'"""A module."""\n{lines}')
    assert [p.split(": ", 1)[1] for p in size_problems(path)] == [
        f"{MODULE_LINES + 1} lines, no 'Size:' paragraph in its docstring"]
    path.write_text(f'"""A module.\n\nSize: a table of constants.\n"""\n{lines}')
    assert size_problems(path) == []


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
