"""Settings shared by every stage: data roots, devices, seeds and output paths.

Also the one place where a parameter's path is resolved (:func:`resolve_path`,
:func:`resolve_model`, :func:`notebook_parameters`): relative paths are taken from the
repository root, whatever the working directory of the kernel. Nothing here holds global
state; every function takes what it needs explicitly.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

#: Environment variable naming the data root (see :func:`data_root`).
DATA_ENV = "BRAINCAP_DATA"

#: Repository root (the folder holding ``pyproject.toml``).
REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root(path: str | os.PathLike | None = None) -> Path:
    """Return the data root: ``path`` if given, else ``$BRAINCAP_DATA``, else ``<repo>/data``.

    Parameters
    ----------
    path : path-like or None
        Explicit data root, relative to the current directory. A relative
        ``$BRAINCAP_DATA`` is taken from the repository root, so that a kernel started
        elsewhere (JupyterLab starts it in ``notebooks/``) finds the same folder.

    Returns
    -------
    root : Path
        Absolute path; it need not exist yet.
    """
    if path is not None:
        return Path(path).expanduser().resolve()
    env = Path(os.environ.get(DATA_ENV) or "data").expanduser()
    return env if env.is_absolute() else _absolute(REPO_ROOT / env)


#: Environment variables that set the thread count of OpenMP, MKL and OpenBLAS.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def set_thread_variables(threads: int | str) -> None:
    """Set :data:`THREAD_VARIABLES` to ``threads`` in this process's environment.

    Takes effect for libraries loaded afterwards and for child processes (kernels, workers).
    """
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)


def physical_cores() -> int:
    """Physical CPU cores available to this process (logical CPUs when unknown)."""
    try:
        logical = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        logical = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or logical
    except ImportError:  # pragma: no cover
        physical = logical
    return max(1, min(physical, logical))


def resolve_device(device: str = "auto"):
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a :class:`torch.device`.

    ``"auto"`` picks CUDA when available, else CPU. Asking for CUDA on a machine without
    it is an error rather than a silent fallback.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={device!r} was requested but CUDA is not available on this machine; "
            "use device='auto' or 'cpu'."
        )
    return dev


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch; return a NumPy generator seeded with ``seed``."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def subject_name(subject: int | str) -> str:
    """Return NSD's folder name for a subject: ``1`` -> ``"subj01"``."""
    if isinstance(subject, str) and subject.startswith("subj"):
        return subject
    return f"subj{int(subject):02d}"


def subject_dir(derived_root: str | os.PathLike, dataset: str, subject: int | str) -> Path:
    """Folder of one subject's derived results: ``<derived_root>/<dataset>/subjXX``."""
    return Path(derived_root) / dataset / subject_name(subject)


def stage_dir(
    derived_root: str | os.PathLike, dataset: str, subject: int | str, *stage: str
) -> Path:
    """Folder of a stage's outputs, e.g. ``stage_dir(root, "toy", 1, "decoding", "stage1")``.

    The folder is created if needed.
    """
    path = subject_dir(derived_root, dataset, subject).joinpath(*stage)
    path.mkdir(parents=True, exist_ok=True)
    return path


def show_progress(progress: bool = True) -> bool:
    """Whether to draw progress bars: ``progress``, unless ``$TQDM_DISABLE`` turns them off.

    ``lib.run`` sets ``TQDM_DISABLE=1`` for batch-executed notebooks; an explicit
    ``tqdm(disable=False)`` would otherwise override it.
    """
    return bool(progress) and os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true", "yes")


# --------------------------------------------------------------------------------------
# Parameter paths and presets: the same values from papermill (cwd = repository root) and
# from JupyterLab (cwd = notebooks/)
# --------------------------------------------------------------------------------------

#: Environment variable naming a parameter file whose values replace a notebook's defaults in
#: an interactive session (:func:`notebook_parameters`): a path, or a preset name (``micro``).
PARAMS_ENV = "BRAINCAP_PARAMS"
#: Folder of the parameter files (``micro.yaml``, ``toy.yaml``, ``nsd.yaml``, ...).
PARAMS_DIR = REPO_ROOT / "notebooks" / "params"
#: Parameter-name endings of local paths (resolved by :func:`resolve_path`) ...
_PATH_SUFFIXES = ("_root", "_dir", "_path", "_file", "_transform", "_lexicon")
#: ... of model ids or folders (:func:`resolve_model`) and of model zoos.
_MODEL_SUFFIX, _ZOO_SUFFIX = "_model", "_zoo"


def _absolute(path: Path) -> Path:
    """``path`` made absolute and normalised, without following symbolic links."""
    return Path(os.path.normpath(os.path.abspath(path)))


def resolve_path(path: str | os.PathLike | None) -> Path | None:
    """Where a path of a parameter file or a notebook's parameters cell points.

    Absolute paths (``~`` expanded) stay as they are. Relative paths are taken from the
    repository root, whatever the current directory (papermill runs notebooks from the
    root, JupyterLab from ``notebooks/``), except those under ``data/``, which are taken from
    the data root (:func:`data_root`: ``$BRAINCAP_DATA`` when set).

    Parameters
    ----------
    path : path-like or None
        E.g. ``"data/toy/nsd"``, ``"/path/to/nsd"``; None passes through.

    Returns
    -------
    path : Path or None
        Absolute; it need not exist.
    """
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.is_absolute():
        return _absolute(p)
    if p.parts and p.parts[0] == "data":
        return _absolute(data_root().joinpath(*p.parts[1:]))
    return _absolute(REPO_ROOT / p)


def resolve_model(name: str | os.PathLike) -> str:
    """A model parameter as a loader needs it: a local folder's absolute path, or a hub id.

    ``"Salesforce/blip2-opt-2.7b"`` stays a Hugging Face hub id unless a folder of that name
    exists under the repository root. A name that cannot be a hub id (absolute, starting with
    ``.`` or ``~``, or with more than one ``/``, such as ``"data/toy/models/blip2-toy-opt"``)
    is a local path and is resolved by :func:`resolve_path` even if it does not exist yet, so
    that the loader's error names the folder it looked for.

    Parameters
    ----------
    name : str or path-like

    Returns
    -------
    name : str
    """
    text = str(name)
    local = resolve_path(text)
    if local.exists():
        return str(local)
    hub_like = not (Path(text).expanduser().is_absolute() or text.startswith((".", "~"))
                    or text.count("/") > 1)
    return text if hub_like else str(local)


def resolve_parameter(name: str, value):
    """Resolve one notebook parameter by its name: paths, model ids and zoos; else unchanged.

    Names ending in ``_root``, ``_dir``, ``_path``, ``_file``, ``_transform`` or ``_lexicon``
    are paths (:func:`resolve_path`), names ending in ``_model`` are model ids or folders
    (:func:`resolve_model`), names ending in ``_zoo`` are a ``zoo.json`` path or a list of
    ``{name, path, family}`` entries whose ``path`` is a model id or folder. Values that are
    not strings (None, numbers, ...) pass through. Paths come back as strings.
    """
    if name.endswith(_ZOO_SUFFIX) and isinstance(value, (list, tuple)):
        return [{**e, "path": resolve_model(e["path"])} if isinstance(e, dict) and "path" in e
                else e for e in value]
    if not isinstance(value, (str, os.PathLike)) or str(value) == "":
        return value
    if name.endswith(_MODEL_SUFFIX):
        return resolve_model(value)
    if name.endswith(_PATH_SUFFIXES + (_ZOO_SUFFIX,)):
        return str(resolve_path(value))
    return value


def preset_path(preset: str | os.PathLike) -> Path:
    """The parameter file of a preset: a name (``"micro"``) or a path (``notebooks/params/x.yaml``).

    Raises
    ------
    FileNotFoundError
        Naming the presets that exist.
    """
    text = str(preset)
    path = PARAMS_DIR / f"{text}.yaml" if "/" not in text and not text.endswith(
        (".yaml", ".yml")) else resolve_path(text)
    if not path.is_file():
        names = sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))
        raise FileNotFoundError(
            f"{PARAMS_ENV}={text}: parameter file {path} not found; use a preset name "
            f"({', '.join(names)}) or a path such as notebooks/params/micro.yaml.")
    return path


class WorldNotBuiltError(FileNotFoundError):
    """A parameter points into a toy world that has not been built; the message says how."""


def _unbuilt_world(path: Path) -> Path | None:
    """The toy-world folder ``<data root>/<preset>[_null]`` holding ``path``, if not built."""
    from lib.toyworld.presets import PRESETS

    try:
        rel = path.relative_to(data_root())
    except ValueError:
        return None
    if not rel.parts or rel.parts[0].removesuffix("_null") not in PRESETS:
        return None
    world = data_root() / rel.parts[0]
    return None if (world / "BUILD.json").exists() else world


def require_world(values: dict) -> None:
    """Raise :class:`WorldNotBuiltError` if a path parameter lies in a toy world not built yet.

    A notebook that declares ``toy_root`` builds that world itself (00), so its own world is
    not required.

    Parameters
    ----------
    values : dict
        Resolved parameters (:func:`resolve_parameter`).
    """
    builds = resolve_path(values["toy_root"]) if values.get("toy_root") else None
    for name, value in values.items():
        if not isinstance(value, str) or not Path(value).is_absolute():
            continue
        world = _unbuilt_world(Path(value))
        if world is None or world == builds:
            continue
        preset, null = world.name.removesuffix("_null"), world.name.endswith("_null")
        command = (f".venv/bin/python -m lib.toyworld build --preset {preset} "
                   f"--seed {values.get('seed', 0)}" + (" --null" if null else ""))
        raise WorldNotBuiltError(
            f"{name} = {value}: the toy world {world} is not built yet. Build it from the "
            f"repository root with\n    {command}\n(`make book` builds the toy world and runs "
            f"every chapter), or run notebooks/00_toy_world.ipynb (toy_root = "
            f"'data/{world.name}', toy_preset = '{preset}'); then run this notebook again.")


def declared_parameters(notebook: str | os.PathLike) -> list[str]:
    """Names a notebook's ``parameters`` cell assigns, in order (what papermill may inject).

    Parameters
    ----------
    notebook : path-like
        The ``.ipynb`` file.
    """
    import ast
    import json

    path = Path(notebook)
    if not path.is_file():
        raise FileNotFoundError(f"notebook {path} not found")
    for cell in json.loads(path.read_text())["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            return [t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Name)]
    raise ValueError(f"{path}: no cell tagged 'parameters'")


def notebook_parameters(notebook: str | os.PathLike, namespace: dict, preset=None,
                        log=print) -> dict:
    """A notebook's parameters as it should use them, wherever its kernel was started.

    Called right after a notebook's ``parameters`` cell, as
    ``globals().update(notebook_parameters("02_convergence", globals()))``:

    1. if a preset is given (``preset``, else ``$BRAINCAP_PARAMS``, e.g. ``micro`` or
       ``notebooks/params/micro.yaml``), its values replace those of the parameters cell,
       for the parameters the notebook declares (as ``lib.run`` passes them); a line says
       which changed. ``lib.run`` ignores ``$BRAINCAP_PARAMS``: its own parameter file
       decides a batch run.
    2. paths, model folders and zoos are resolved (:func:`resolve_parameter`): relative
       paths are taken from the repository root (``data/...`` from the data root), not from
       the kernel's current directory (``notebooks/`` in JupyterLab);
    3. a path into a toy world that is not built raises :class:`WorldNotBuiltError`, with the
       command that builds it.

    Parameters
    ----------
    notebook : str or path-like
        Notebook name in ``notebooks/`` (``"02_convergence"``) or path of an ``.ipynb``;
        its parameters cell declares the names (:func:`declared_parameters`).
    namespace : dict
        Where the parameters cell put its values (``globals()``).
    preset : str, path-like or None
        Parameter file or preset name; None reads ``$BRAINCAP_PARAMS`` (unset: no preset).
    log : callable
        Receives the line naming the parameters a preset changed.

    Returns
    -------
    values : dict
        Every declared parameter, resolved.
    """
    text = str(notebook)
    source = resolve_path(text) if text.endswith(".ipynb") else (
        REPO_ROOT / "notebooks" / f"{text}.ipynb")
    declared = declared_parameters(source)
    undefined = [k for k in declared if k not in namespace]
    if undefined:
        raise NameError(f"{source.name}: run its parameters cell first "
                        f"({', '.join(undefined)} not defined)")
    values = {k: namespace[k] for k in declared}
    preset = os.environ.get(PARAMS_ENV) if preset is None else preset
    if preset:
        from lib.run import load_params

        path = preset_path(preset)
        taken = {k: v for k, v in load_params(path).items() if k in values}
        changed = sorted(k for k, v in taken.items() if values[k] != v)
        values.update(taken)
        log(f"{PARAMS_ENV}={preset}: {path.name} sets {len(changed)} parameter(s) of "
            f"{source.stem}" + (f": {', '.join(changed)}" if changed else ""))
    values = {k: resolve_parameter(k, v) for k, v in values.items()}
    require_world(values)
    return values
