"""The model zoo: entries, parameter counts, depths, and the models that could not be used.

A model that fails to load or run is reported, not fatal: its row (:func:`failure_row`) goes to
``failed_models.csv`` (:data:`FAILED_COLUMNS`) and the analysis goes on with the others. A gated
hub model (``gated: true``) is skipped (:func:`check_available`) when no hub login is configured
and it is not in the local cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: ``convergence/failed_models.csv``: models that failed (``status`` "failed") or were skipped
#: ("skipped": gated without a login), with the error and a hint; the analysis goes on without.
FAILED_FILE = "failed_models.csv"
FAILED_COLUMNS = ["model", "error", "hint", "status", "family", "modality", "path"]


class GatedModelSkipped(RuntimeError):
    """A gated hub model without a hub login or a local copy: skipped, not failed."""


def load_zoo(zoo, models_root=None, modality: str | None = None) -> list[dict]:
    """Read a model zoo: a ``zoo.json`` path or a list of entries.

    Parameters
    ----------
    zoo : path-like or list of dict
        ``zoo.json`` (``[{"name", "path", "family", "modality", "n_params", "trained"}]``,
        paths relative to its folder), or a list of entries with at least ``name``, ``path``
        and ``family`` (``path`` a hub id or a folder; ``gated: true`` marks a hub model that
        needs a login) and/or ``zoo.json`` paths (whose entries are added there).
    models_root : path-like or None
        Folder relative entry paths are resolved against; default the folder of ``zoo.json``.
    modality : {"vision", "language"} or None
        Keep only these entries; entries without ``modality`` get this one.

    Returns
    -------
    entries : list of dict
        With ``name``, ``path`` (str), ``family``, ``modality``, ``n_params`` (int or None),
        ``trained`` (bool, default True) and ``gated`` (bool, default False).
    """
    if not isinstance(zoo, (str, os.PathLike)) and any(
            isinstance(e, (str, os.PathLike)) for e in zoo or []):
        return [entry for item in zoo
                for entry in load_zoo(item if isinstance(item, (str, os.PathLike)) else [item],
                                      models_root, modality)]
    if isinstance(zoo, (str, os.PathLike)):
        path = Path(zoo)
        if not path.exists():
            raise FileNotFoundError(
                f"Model zoo {path} not found. Build the toy world (python -m lib.toyworld "
                "build) or pass a list of {name, path, family} entries."
            )
        entries = json.loads(path.read_text())
        models_root = path.parent if models_root is None else models_root
    else:
        entries = list(zoo or [])
    out = []
    for e in entries:
        e = _with_defaults(e, modality)
        if modality is not None and e["modality"] != modality:
            continue
        p = Path(str(e["path"])).expanduser()
        if models_root is not None and not p.is_absolute() and (Path(models_root) / p).exists():
            e["path"] = str(Path(models_root) / p)
        else:
            e["path"] = str(e["path"])
        out.append(e)
    return out


def _with_defaults(entry: dict, modality: str | None) -> dict:
    """A copy of a zoo entry with every optional key set (``family`` defaults to ``name``)."""
    e = dict(entry)
    for key in ("name", "path"):
        if key not in e:
            raise ValueError(f"Zoo entry {e} lacks {key!r}.")
    e.setdefault("family", e["name"])
    e.setdefault("modality", modality or "vision")
    e.setdefault("n_params", None)
    e.setdefault("trained", True)
    e.setdefault("gated", False)
    return e


def count_parameters(path, modality: str = "vision") -> int:
    """Number of parameters of the network features are taken from, without loading weights.

    The model is built from its configuration on PyTorch's ``meta`` device (no memory, no
    weights): the base ``AutoModel`` for vision (the vision tower of dual encoders such as
    CLIP), ``AutoModelForCausalLM`` for language. Works for local folders and, when their
    configuration is reachable or cached, hub ids.

    Parameters
    ----------
    path : str or path-like
        Model folder or hub id.
    modality : {"vision", "language"}

    Returns
    -------
    n_params : int
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from lib.features.hidden import _DUAL_ENCODERS, _check_local_or_hub

    config = AutoConfig.from_pretrained(_check_local_or_hub(path))
    with torch.device("meta"):
        if modality == "language":
            model = AutoModelForCausalLM.from_config(config)
        else:
            model = AutoModel.from_config(config)
            if config.model_type in _DUAL_ENCODERS and hasattr(model, "vision_model"):
                model = model.vision_model
    return int(sum(p.numel() for p in model.parameters()))


def n_hidden_states(entry: dict, layer_ids: list[int]) -> int:
    """Number of hidden states of a model (embeddings + blocks), from its config when available.

    Parameters
    ----------
    entry : dict
        Zoo entry (``path``).
    layer_ids : list of int
        The layers that were extracted: the fallback is ``max(layer_ids) + 1``.

    Returns
    -------
    n : int
        Conv nets: stem + stages; transformers: ``num_hidden_layers + 1``.
    """
    n = _configured_depth(entry["path"])
    return n if n else max(layer_ids) + 1


def _configured_depth(path) -> int | None:
    """Hidden states of the model at ``path`` according to its config (None if unreadable)."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
    except Exception:  # noqa: BLE001 - the caller falls back on the extracted layers
        return None
    config = getattr(config, "vision_config", None) or getattr(config, "text_config",
                                                                 None) or config
    if getattr(config, "depths", None):  # conv nets: stem + stages
        return len(config.depths) + 1
    n = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    return int(n) + 1 if n else None


def check_available(entry: dict) -> None:
    """Raise :class:`GatedModelSkipped` for a gated model that cannot be used here.

    Parameters
    ----------
    entry : dict
        Zoo entry (``gated``, ``path``). A gated model is usable with a hub login or a copy in
        the local cache.
    """
    from lib.features.sources import hub_token_configured, locate_model

    if not entry.get("gated") or hub_token_configured() or locate_model(entry["path"]).ok:
        return
    raise GatedModelSkipped("gated model and no Hugging Face login configured")


def failure_row(entry: dict, err: BaseException) -> dict:
    """The ``failed_models.csv`` row of a model that raised ``err``.

    Parameters
    ----------
    entry : dict
        Zoo entry.
    err : BaseException
        :class:`GatedModelSkipped` gives ``status`` "skipped" with the login hint; anything
        else "failed", with the exception's type and message and a hint for the fix
        (:func:`lib.features.sources.failure_hint`).

    Returns
    -------
    row : dict
        Keys :data:`FAILED_COLUMNS`.
    """
    from lib.features.sources import failure_hint, gated_hint

    row = {"model": entry["name"], "family": entry["family"], "modality": entry["modality"],
           "path": str(entry["path"])}
    if isinstance(err, GatedModelSkipped):
        return {**row, "status": "skipped", "error": str(err), "hint": gated_hint(entry["path"])}
    message = " ".join(str(err).split())
    return {**row, "status": "failed", "error": f"{type(err).__name__}: {message[:500]}",
            "hint": failure_hint(err, entry["path"])}


def release_memory() -> None:
    """Free what a failed model left behind (GPU memory above all) before the next one."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_failed_models(out_dir, failures: list[dict]):
    """Write ``failed_models.csv`` (also when every model ran: a table without rows).

    Parameters
    ----------
    out_dir : path-like
        The convergence stage folder.
    failures : list of dict
        Rows from :func:`failure_row`.

    Returns
    -------
    failed : pandas.DataFrame
        Columns :data:`FAILED_COLUMNS`.
    """
    import pandas as pd

    from lib.io import atomic_path

    failed = pd.DataFrame(failures, columns=FAILED_COLUMNS)
    with atomic_path(Path(out_dir) / FAILED_FILE) as tmp:
        failed.to_csv(tmp, index=False)
    return failed


def read_failed_models(out_dir):
    """``failed_models.csv`` of a convergence run (:func:`write_failed_models`).

    Parameters
    ----------
    out_dir : path-like
        The convergence stage folder.

    Returns
    -------
    failed : pandas.DataFrame
        Columns :data:`FAILED_COLUMNS`; no rows when every model ran.
    """
    import pandas as pd

    path = Path(out_dir) / FAILED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the convergence analysis first.")
    return pd.read_csv(path, dtype=str, keep_default_na=False).reindex(columns=FAILED_COLUMNS)
