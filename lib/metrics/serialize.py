"""Turn metric results (NumPy arrays and scalars inside dicts) into JSON-ready objects."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def jsonable(obj: Any, drop_per_item: bool = False) -> Any:
    """Recursively convert NumPy arrays/scalars to lists/floats (NaN and inf -> None).

    Parameters
    ----------
    obj : Any
        A metrics dict (e.g. from :func:`lib.metrics.caption_metrics` or
        :func:`lib.metrics.retrieval_topk`), possibly nested.
    drop_per_item : bool
        Leave out every ``"per_item"`` entry (per-caption arrays) to keep files small.

    Returns
    -------
    plain : Any
        The same structure made of dict, list, str, int, float, bool and None.
    """
    if isinstance(obj, dict):
        return {
            str(k): jsonable(v, drop_per_item)
            for k, v in obj.items()
            if not (drop_per_item and k == "per_item")
        }
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, drop_per_item) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), drop_per_item)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj
