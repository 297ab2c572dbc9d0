"""lib.config and lib.io: data roots, devices, seeds, paths, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lib import config, io


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(config.DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # the default does not depend on the working directory
    assert config.data_root() == config.REPO_ROOT / "data"
    monkeypatch.setenv(config.DATA_ENV, str(tmp_path / "env"))
    assert config.data_root() == (tmp_path / "env").resolve()
    monkeypatch.setenv(config.DATA_ENV, "elsewhere")
    assert config.data_root() == config.REPO_ROOT / "elsewhere"
    assert config.data_root(tmp_path / "arg") == (tmp_path / "arg").resolve()


def test_resolve_device():
    assert config.resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert config.resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            config.resolve_device("cuda")


def test_seed_everything_is_repeatable():
    a = config.seed_everything(3).normal(size=4), torch.rand(3)
    b = config.seed_everything(3).normal(size=4), torch.rand(3)
    np.testing.assert_array_equal(a[0], b[0])
    assert torch.equal(a[1], b[1])


def test_stage_paths(tmp_path):
    assert config.subject_name(1) == "subj01" and config.subject_name("subj07") == "subj07"
    path = config.stage_dir(tmp_path, "toy", 2, "decoding", "stage1")
    assert path == tmp_path / "toy" / "subj02" / "decoding" / "stage1" and path.is_dir()


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "result.json"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(target.parent.iterdir()) == []
    io.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_show_progress_follows_tqdm_disable(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert config.show_progress() and not config.show_progress(False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not config.show_progress(True)


def test_resolve_path_ignores_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(config.DATA_ENV, raising=False)
    monkeypatch.chdir(config.REPO_ROOT / "notebooks")  # where JupyterLab starts a kernel
    root = config.REPO_ROOT
    assert config.resolve_path("data/toy/nsd") == root / "data" / "toy" / "nsd"
    assert config.resolve_path("reference/x.csv") == root / "reference" / "x.csv"
    assert config.resolve_path(tmp_path) == tmp_path and config.resolve_path(None) is None
    monkeypatch.setenv(config.DATA_ENV, str(tmp_path))  # data/... follows the data root
    assert config.resolve_path("data/toy/nsd") == tmp_path / "toy" / "nsd"


def test_resolve_model_keeps_hub_ids(tmp_path):
    assert config.resolve_model("Salesforce/blip2-opt-2.7b") == "Salesforce/blip2-opt-2.7b"
    assert config.resolve_model("gpt2") == "gpt2"
    assert config.resolve_model("data/toy/models/blip2-toy-opt") == str(
        config.data_root() / "toy" / "models" / "blip2-toy-opt")  # a path even before it exists
    local = tmp_path / "org" / "model"
    local.mkdir(parents=True)
    assert config.resolve_model(local) == str(local)
    zoo = config.resolve_parameter("vision_zoo", [{"name": "a", "path": "org/model"},
                                                  {"name": "b", "path": "./m"}])
    assert zoo[0]["path"] == "org/model" and zoo[1]["path"] == str(config.REPO_ROOT / "m")
    assert config.resolve_parameter("seed", 3) == 3
    assert config.resolve_parameter("dataset", "data/x") == "data/x"  # not a path parameter


def _defaults(name):
    """A notebook's parameters cell values (its literal defaults)."""
    import ast

    import papermill

    declared = papermill.inspect_notebook(str(config.REPO_ROOT / "notebooks" / f"{name}.ipynb"))
    return {k: ast.literal_eval(p["default"]) for k, p in declared.items()}


def _params_cell(monkeypatch, **overrides):
    """The 02 notebook's parameters cell, run from notebooks/ like JupyterLab does."""
    monkeypatch.chdir(config.REPO_ROOT / "notebooks")
    return {**_defaults("02_convergence"), **overrides}


def test_notebook_parameters_preset_and_paths(micro_root, monkeypatch):
    namespace = _params_cell(monkeypatch)
    monkeypatch.delenv(config.PARAMS_ENV, raising=False)
    lines = []
    monkeypatch.setenv(config.PARAMS_ENV, "micro")
    values = config.notebook_parameters("02_convergence", namespace, log=lines.append)
    assert values["dataset"] == "micro" and values["convergence_layers"] == 3
    assert values["vision_zoo"] == str(micro_root / "models" / "zoo.json")
    assert values["derived_root"] == str(config.data_root() / "derived")
    assert "micro.yaml sets" in lines[0] and "vision_zoo" in lines[0]
    assert set(values) == set(namespace)
    with pytest.raises(FileNotFoundError, match="preset name"):
        config.notebook_parameters("02_convergence", namespace, preset="nosuchpreset")
    with pytest.raises(NameError, match="parameters cell first"):
        config.notebook_parameters("02_convergence", {"dataset": "toy"}, preset="")


def test_unbuilt_toy_world_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv(config.DATA_ENV, str(tmp_path))  # an empty data root: nothing built
    namespace = _params_cell(monkeypatch)
    with pytest.raises(config.WorldNotBuiltError) as err:
        config.notebook_parameters("02_convergence", namespace, preset="")
    assert "python -m lib.toyworld build --preset toy --seed 0" in str(err.value)
    assert "vision_zoo" in str(err.value)
    null = _params_cell(monkeypatch, vision_zoo="data/toy_null/models/zoo.json")
    with pytest.raises(config.WorldNotBuiltError, match="--preset toy --seed 0 --null"):
        config.notebook_parameters("02_convergence", null, preset="")
    # 00 builds the world its toy_root names: nothing is required there
    values = config.notebook_parameters("00_toy_world", _defaults("00_toy_world"), preset="")
    assert values["toy_root"] == str(tmp_path / "toy")


def test_batch_runs_ignore_the_interactive_preset(tmp_path, monkeypatch):
    """lib.run: the parameter file decides; $BRAINCAP_PARAMS only steers JupyterLab."""
    import yaml

    from lib import run
    from tests.notebook_factory import write_notebook

    nb = write_notebook(
        tmp_path / "notebooks" / "01_paths.ipynb", "seed = 0\nderived_root = 'data/derived'",
        "from lib.config import notebook_parameters\n"
        f"globals().update(notebook_parameters({str(tmp_path / 'notebooks' / '01_paths.ipynb')!r},"
        " globals()))\n"
        "import json, pathlib\n"
        f"pathlib.Path({str(tmp_path / 'out.json')!r}).write_text(json.dumps(dict(seed=seed, "
        "derived_root=derived_root)))")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"notebooks": [nb.stem], "seed": 5}))
    monkeypatch.setenv(config.PARAMS_ENV, "micro")  # micro.yaml says seed: 0
    run.run_book(params, tmp_path / "run", notebook_dir=nb.parent, log=lambda s: None)
    out = json.loads((tmp_path / "out.json").read_text())
    assert out == {"seed": 5, "derived_root": str(config.data_root() / "derived")}
