"""Build the toy world: stimuli, captions, design, brains, NSD-layout files, then the models.

``build(preset, seed, out)`` writes::

    out/nsd/...          the raw NSD layout (DESIGN.md §5)
    out/truth/...        ground truth for teaching: scene latents, voxel tuning, retinotopy,
                         measured reliability (JSON / HDF5 / NIfTI; no pickles)
    out/models/...       the toy models (lib.toyworld.models.train_all)
    out/MODELS.json      the models' stamp (preset, seed, models code version)
    out/BUILD.json       written last: preset, seed, code version, wall and CPU time per
                         phase (world steps, each model; lib.toyworld.timing), and the
                         machine (CPU, numpy and torch versions: :func:`build_machine`)

A build is skipped when ``out/BUILD.json`` records the same preset, seed and code version
(a hash of the syntax trees of ``lib/toyworld/**/*.py``, leaving out the CLI and notebook
helpers). The world and the models are also cached on their own (``out/truth/WORLD.json``:
world sources; ``out/MODELS.json``: ``models/`` plus scenes and captions), so a change to one
does not redo the other.

A *null world* (``null=True``; CLI ``--null``) is the same world with brain responses that
carry no information about the images (:func:`lib.toyworld.brain.null_signal_rows`); its
stamps record ``"null": true``. Its models are those of the normal world: the models learn
from scenes apart from the experiment, never from the brain, so when the normal world's
models of the same preset, seed and models code exist (``models_from``, by default the folder
``<preset>`` next to ``out`` or under the data root), they are hard-linked (or copied), not
retrained.

The world itself is made by :func:`lib.toyworld.world.build_world`.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

from .presets import get_preset
from .timing import Stopwatch
from .world import build_world

log = logging.getLogger(__name__)

#: Files whose content defines the world (the models have their own code).
_WORLD_SOURCES = ("scenes.py", "captions.py", "anatomy.py", "stimulus_features.py", "brain.py",
                  "layout.py", "presets.py", "world.py")
_TOYWORLD = Path(__file__).resolve().parent


#: Sources that cannot change what a build writes (CLI, package init, notebook helpers).
_NOT_OUTPUT_SOURCES = ("__init__.py", "__main__.py", "explore.py")


def code_version(files: list[Path] | None = None) -> str:
    """SHA-256 (first 16 hex digits) of the toy-world sources' syntax trees.

    By default ``lib/toyworld/**/*.py`` except the files that do not change the outputs
    (:data:`_NOT_OUTPUT_SOURCES` at the top level). Each file counts by its syntax tree without
    docstrings (:func:`_code_fingerprint`), so re-wrapping lines, comments and documentation do
    not invalidate a build that takes minutes; any change to what the code does does.
    """
    if files is None:
        files = [f for f in _TOYWORLD.rglob("*.py")
                 if not (f.parent == _TOYWORLD and f.name in _NOT_OUTPUT_SOURCES)]
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.relative_to(_TOYWORLD)).encode())
        h.update(_code_fingerprint(f.read_text()).encode())
    return h.hexdigest()[:16]


def _code_fingerprint(source: str) -> str:
    """The syntax tree of ``source`` with docstrings removed, as text (no comments, no layout)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def default_out(preset: str, null: bool = False) -> Path:
    """``data_root()/preset`` (``data_root()/"<preset>_null"`` for a null world)."""
    from lib.config import data_root

    return data_root() / (f"{preset}_null" if null else preset)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- entry point
# size: 62 lines, of which the signature and numpydoc docstring are 33 (the body is 29).
def build(preset: str = "toy", seed: int = 0, out: Path | None = None, force: bool = False,
          models: bool = True, null: bool = False, models_from: Path | None = None,
          n_subjects: int | None = None) -> Path:
    """Build the toy world (and its models) for a preset, or reuse a cached build.

    Parameters
    ----------
    preset : {"toy", "micro"}
        Size of the world (:mod:`lib.toyworld.presets`).
    seed : int
        Seed of every random draw.
    out : path-like or None
        Output folder; default ``data_root()/preset``.
    force : bool
        Rebuild even if a matching build exists.
    models : bool
        Also train the toy models (``lib.toyworld.models.train_all``). ``False`` builds the
        world only (its ``BUILD.json`` then does not satisfy a later ``models=True`` call).
    null : bool
        Build the null world (same world, responses unrelated to the images); default
        ``out`` is then ``data_root()/"<preset>_null"``.
    models_from : path-like or None
        A normal world's folder whose up-to-date models are linked instead of retrained
        (null worlds only). None tries ``out.parent/preset`` and ``default_out(preset)``.
    n_subjects : int or None
        Number of subjects (None: the preset's). Each subject sees the preset's shared images
        plus images of its own; the models do not depend on it.

    Returns
    -------
    out : Path
        The folder holding ``nsd/``, ``models/``, ``truth/`` and ``BUILD.json``.
    """
    p = get_preset(preset)
    if n_subjects is not None and n_subjects != p.n_subjects:
        if n_subjects < 1:
            raise ValueError(f"n_subjects must be at least 1, got {n_subjects}")
        p = dataclasses.replace(p, n_subjects=int(n_subjects)).check()
    out = Path(out) if out is not None else default_out(preset, null)
    out = out.resolve()
    version = code_version()
    world_version = code_version([_TOYWORLD / f for f in _WORLD_SOURCES])
    stamp = out / "BUILD.json"
    done = _read_json(stamp)
    key = {"preset": preset, "seed": int(seed), "null": bool(null), "code_version": version,
           "with_models": models, "n_subjects": p.n_subjects}
    if not force and done and all(done.get(k) == v for k, v in key.items()):
        log.info("toy world %s (seed %d) is up to date in %s", preset, seed, out)
        return out
    from lib.io import exclusive_lock

    with exclusive_lock(out / ".build.lock",  # another process building the same folder
                        f"[toyworld] another process is building {out}; waiting for it"):
        done = _read_json(stamp)
        if not force and done and all(done.get(k) == v for k, v in key.items()):
            return out
        sources = []
        if null:
            sources = [Path(models_from)] if models_from is not None else [
                out.parent / preset, default_out(preset)]
        _build_locked(p, preset, seed, out, force, models, key, world_version, null, sources)
    return out


def world_subjects(preset: str, subjects) -> int:
    """Subjects the world of a run needs: the preset's, or up to the highest the run lists.

    Parameters
    ----------
    preset : str
        Toy preset (:mod:`lib.toyworld.presets`).
    subjects : sequence of int
        The run's subjects (``subjects`` of a parameter file).

    Returns
    -------
    n_subjects : int
        What :func:`build` takes as ``n_subjects`` (00_toy_world and :mod:`lib.run` pass it).
    """
    return max(get_preset(preset).n_subjects, *(int(s) for s in subjects))


def _build_locked(p, preset: str, seed: int, out: Path, force: bool, models: bool, key: dict,
                  world_version: str, null: bool, models_sources: list) -> None:
    stamp = out / "BUILD.json"
    if stamp.exists():
        stamp.unlink()  # an interrupted rebuild must not look finished

    from lib.io import write_json

    with Stopwatch() as total:
        summary, models_result = _world_and_models(p, preset, seed, out, force, models,
                                                   world_version, null, models_sources)
    write_json(stamp, {
        **key,
        "world_version": world_version,
        "world_wall_s": summary.get("wall_s"),
        "world_cpu_s": summary.get("cpu_s"),
        "world_timings": summary.get("timings"),
        "models": models_result,
        "wall_s": round(total.wall_s, 2),
        "cpu_s": round(total.cpu_s, 2),
        "machine": build_machine(),
    })


def build_machine() -> dict:
    """The CPU and numerical libraries of a build (``BUILD.json``'s ``machine``).

    Builds agree bit for bit only where these agree: BLAS and oneDNN choose their kernels from
    the CPU they find, so the same code and seed give slightly different models elsewhere.

    Returns
    -------
    machine : dict
        :func:`lib.resources.cpu_info`, plus the ``numpy`` and ``torch`` versions and torch's
        ``cpu_capability`` (the vector extension its own kernels use).
    """
    import numpy as np
    import torch

    from lib.resources import cpu_info

    return {**cpu_info(), "numpy": np.__version__, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _world_and_models(p, preset: str, seed: int, out: Path, force: bool, models: bool,
                      world_version: str, null: bool, models_sources: list):
    """Build (or reuse) the world, then train (or reuse) the models; return both summaries."""
    from lib.io import write_json

    world_stamp = out / "truth" / "WORLD.json"
    wkey = {"preset": preset, "seed": int(seed), "null": bool(null),
            "world_version": world_version, "n_subjects": p.n_subjects}
    wdone = _read_json(world_stamp)
    if force or not wdone or any(wdone.get(k) != v for k, v in wkey.items()):
        if world_stamp.exists():
            world_stamp.unlink()
        for sub in ("nsd", "truth"):
            if (out / sub).exists():
                shutil.rmtree(out / sub)
        kind = "null world" if null else "world"
        print(f"[toyworld] building the {preset} {kind} (seed {seed}) in {out}", flush=True)
        with Stopwatch() as sw:
            summary = build_world(p, seed, out, null=null)
        summary["wall_s"], summary["cpu_s"] = round(sw.wall_s, 2), round(sw.cpu_s, 2)
        write_json(world_stamp, {**wkey, "preset_settings": p.to_dict(), **summary})
        print(f"[toyworld] world built in {summary['wall_s']:.1f} s "
              f"({summary['cpu_s']:.1f} s CPU)", flush=True)
    else:
        summary = wdone
        print(f"[toyworld] reusing the {preset} world in {out / 'nsd'}", flush=True)
    from .captions import write_lexicon  # category words of the captions, read by notebook 06

    write_lexicon(out / "truth" / "lexicon.json")

    if models:
        models_result = _train_models_cached(out, preset, seed, models_sources)
    else:
        models_result = {"skipped": True}
    return summary, models_result


def models_version() -> str:
    """Code version of the models: ``lib/toyworld/models/**`` plus the scene and caption code."""
    files = list((_TOYWORLD / "models").rglob("*.py"))
    files += [_TOYWORLD / "scenes.py", _TOYWORLD / "captions.py"]
    return code_version(files)


def _models_up_to_date(folder: Path, key: dict) -> dict | None:
    """``folder/MODELS.json`` if it records ``key`` and ``folder/models`` exists, else None."""
    done = _read_json(folder / "MODELS.json")
    if done and all(done.get(k) == v for k, v in key.items()) and (folder / "models").is_dir():
        return done
    return None


def _train_models_cached(out: Path, preset: str, seed: int, sources: list | None = None):
    """Train the models unless ``out/MODELS.json`` records this preset, seed and models code.

    With ``sources`` (folders of other worlds of the same preset and seed), up-to-date models
    found there are hard-linked (or copied) into ``out/models`` instead of being retrained.
    """
    from lib.io import write_json

    stamp = out / "MODELS.json"
    key = {"preset": preset, "seed": int(seed), "models_version": models_version()}
    done = _models_up_to_date(out, key)
    if done:
        print(f"[toyworld] reusing the toy models in {out / 'models'}", flush=True)
        return done.get("result")
    if stamp.exists():
        stamp.unlink()
    for src in sources or []:
        src = Path(src).resolve()
        found = None if src == out else _models_up_to_date(src, key)
        if found:
            print(f"[toyworld] linking the toy models of {src} (not retrained)", flush=True)
            _link_tree(src / "models", out / "models")
            write_json(stamp, {**key, "result": found.get("result"), "linked_from": str(src)})
            return found.get("result")
    result = _train_models(out / "models", preset, seed)
    write_json(stamp, {**key, "result": result})
    return result


def _link_tree(src: Path, dst: Path) -> None:
    """Replace ``dst`` by a copy of ``src`` made of hard links (plain copies across devices)."""
    import os

    def link_or_copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=link_or_copy)


def _train_models(models_dir: Path, preset: str, seed: int):
    """Train every toy model with ``lib.toyworld.models.train_all``; return its report."""
    from .models import train_all

    result = train_all(models_dir, preset, seed)
    total, workers = result["total"], result["workers"]
    print(f"[toyworld] models trained in {total['wall_s']:.1f} s ({total['cpu_s']:.1f} s CPU"
          f"{f', {workers} processes' if workers > 1 else ''})", flush=True)
    return json.loads(json.dumps(result, default=str))
