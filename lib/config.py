"""Settings shared by every stage: data roots, devices, seeds and output paths.

Nothing here holds global state; every function takes what it needs explicitly.
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
    """Return the data root: ``path`` if given, else ``$BRAINCAP_DATA``, else ``./data``.

    Parameters
    ----------
    path : path-like or None
        Explicit data root. Relative paths are taken relative to the current directory.

    Returns
    -------
    root : Path
        Absolute path; it need not exist yet.
    """
    if path is None:
        path = os.environ.get(DATA_ENV) or "data"
    return Path(path).expanduser().resolve()


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
