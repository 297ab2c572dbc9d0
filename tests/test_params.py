"""The parameter files: every key is used by a notebook and documented in the book."""

from __future__ import annotations

import papermill
import pytest

from lib.config import REPO_ROOT
from lib.notebook_job import CONTROL_KEYS
from lib.run import load_params

PARAMS = sorted((REPO_ROOT / "notebooks" / "params").glob("*.yaml"))
REFERENCE = (REPO_ROOT / "book" / "reference" / "parameters.md").read_text()


def declared_parameters():
    names = set()
    for notebook in (REPO_ROOT / "notebooks").glob("*.ipynb"):
        names |= set(papermill.inspect_notebook(str(notebook)))
    return names


def test_the_three_parameter_sets_exist():
    assert {p.stem for p in PARAMS} >= {"micro", "toy", "nsd"}


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.stem)
def test_every_key_is_declared_and_documented(path):
    params = load_params(path)
    declared = declared_parameters()
    unused = sorted(k for k in params if k not in CONTROL_KEYS and k not in declared)
    assert unused == [], f"{path.name}: no notebook declares {unused}"
    undocumented = sorted(k for k in params if f"`{k}`" not in REFERENCE)
    assert undocumented == [], f"{path.name}: book/reference/parameters.md lacks {undocumented}"

