"""Build small notebooks for tests of lib.run and of the book build."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


def write_notebook(path: Path, parameters: str, *cells: str,
                   title: str = "A test notebook") -> Path:
    """Write a notebook with a tagged parameters cell, then code (or ``md:``-prefixed) cells."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells.append(new_markdown_cell(f"# {title}"))
    nb.cells.append(new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    for cell in cells:
        if cell.startswith("md:"):
            nb.cells.append(new_markdown_cell(cell[3:]))
        else:
            nb.cells.append(new_code_cell(cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path
