"""The convergence tables: ``scores.csv`` rows, layer selection, per-voxel maps, ceilings.

``scores.csv`` has one row per (model, layer, roi), columns :data:`SCORE_COLUMNS` then
:data:`EXTRA_COLUMNS`. The Pearson r of the leave-one-out predictions on the training images
(``val_score``) chooses the best layer of every model and ROI (``selected``,
:func:`mark_selected`): no choice sees the test images. ``voxel_scores.h5`` holds every layer's
per-voxel maps (:func:`write_voxel_scores`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Columns of ``convergence/scores.csv`` (DESIGN.md section 5), then the extra ones.
SCORE_COLUMNS = ["model", "family", "modality", "n_params", "layer", "roi", "score", "val_score",
                 "selected", "n_voxels"]
EXTRA_COLUMNS = ["trained", "n_layers", "depth", "noise_ceiling", "noise_ceiling_null"]


def score_table(results: dict, failures=()):
    """The ``scores.csv`` table of the models that ran, with the selected layers marked.

    Parameters
    ----------
    results : dict of str to ModelResult
        Per model name, the output of :func:`lib.encoding.convergence_one_model` (its
        ``rows``).
    failures : sequence of dict
        ``failed_models.csv`` rows, listed in the error when no model ran.

    Returns
    -------
    scores : pandas.DataFrame
        One row per (model, layer, roi), columns :data:`SCORE_COLUMNS` then
        :data:`EXTRA_COLUMNS`, ``selected`` set by :func:`mark_selected`.

    Raises
    ------
    RuntimeError
        When no model ran (the message lists every failure and its hint).
    """
    import pandas as pd

    if not results:
        raise RuntimeError(f"No model of the zoo ran ({len(failures)} failed or skipped; see "
                           "failed_models.csv):\n" + "\n".join(
                               f"  {f['model']}: {f['error']} -> {f['hint']}" for f in failures))
    rows = [row for result in results.values() for row in result.rows]
    return mark_selected(pd.DataFrame(rows, columns=SCORE_COLUMNS + EXTRA_COLUMNS))


def mark_selected(scores):
    """Set ``selected`` on the layer with the highest ``val_score`` of every (model, roi).

    Parameters
    ----------
    scores : pandas.DataFrame
        With ``model``, ``roi``, ``val_score``.

    Returns
    -------
    scores : pandas.DataFrame
        A copy with the boolean column ``selected`` (one true row per (model, roi) whose
        ``val_score`` is not all NaN).
    """
    scores = scores.copy()
    idx = scores.groupby(["model", "roi"])["val_score"].idxmax().dropna().astype(int)
    scores["selected"] = scores.index.isin(idx)
    return scores


def write_voxel_scores(path, subject, maps: dict, ceiling: dict, zoo=(), n_test: int = 0) -> Path:
    """Write per-voxel maps: every layer's test scores per model, the best layer's map.

    The best layer of a model is the one with the highest mean ``val_score`` (leave-one-out on
    the training images) over all voxels (nsdgeneral's selected layer), so the test set does
    not choose it.

    Layout: ``noise_ceiling`` and ``noise_ceiling_p`` (n_voxels,) from :func:`noise_ceilings`,
    ``voxel_ijk`` (n_voxels, 3), attrs ``affine``, ``grid_shape``, ``n_test`` (test images
    behind every score, for significance) and ``noise_ceiling_n_average``; per model a group
    ``models/<name>`` with ``layers`` (n_layers,), ``score``, ``val_score``, ``alpha``
    (n_layers, n_voxels), ``best_score`` (n_voxels,) and attrs ``best_layer``, ``family``,
    ``modality``.

    Parameters
    ----------
    path : path-like
        ``voxel_scores.h5`` (written atomically).
    subject : lib.nsd.PreparedSubject
        Source of ``voxel_ijk``, ``affine`` and ``grid_shape``.
    maps : dict of str to dict
        Per model name, ``ModelResult.maps``: ``layers`` (n_layers,), ``score``,
        ``val_score``, ``alpha`` (n_layers, n_voxels).
    ceiling : dict
        From :func:`lib.encoding.noise_ceilings`.
    zoo : sequence of dict
        Zoo entries (``family`` and ``modality`` of each model).
    n_test : int
        Number of test images behind every score.

    Returns
    -------
    path : Path
    """
    import h5py

    from lib.io import atomic_path

    info = {e["name"]: e for e in zoo}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("noise_ceiling", data=ceiling["voxel"])
        f.create_dataset("noise_ceiling_p", data=ceiling["p_value"])
        f.create_dataset("voxel_ijk", data=subject.voxel_ijk)
        f.attrs["affine"] = np.asarray(subject.affine)
        f.attrs["grid_shape"] = np.asarray(subject.grid_shape)
        f.attrs["n_test"] = int(n_test)
        f.attrs["noise_ceiling_n_average"] = int(ceiling["n_average"])
        for name, m in maps.items():
            g = f.create_group(f"models/{name.replace('/', '__')}")
            for key in ("layers", "score", "val_score", "alpha"):
                g.create_dataset(key, data=m[key])
            best = int(np.argmax(np.nanmean(m["val_score"], axis=1)))
            g.create_dataset("best_score", data=m["score"][best])
            g.attrs["best_layer"] = int(m["layers"][best])
            g.attrs["name"] = name
            for key in ("family", "modality"):
                g.attrs[key] = str(info.get(name, {}).get(key, ""))
    return Path(path)


def read_voxel_scores(path, model: str) -> dict:
    """Read one model's maps from ``voxel_scores.h5`` (see :func:`write_voxel_scores`).

    Parameters
    ----------
    path : path-like
        ``voxel_scores.h5``.
    model : str
        Model name.

    Returns
    -------
    maps : dict
        The model's datasets (``layers``, ``score``, ``val_score``, ``alpha``, ``best_score``)
        and attributes, with ``noise_ceiling``, ``noise_ceiling_p`` (n_voxels,) and ``n_test``.
    """
    import h5py

    with h5py.File(path, "r") as f:
        key = f"models/{model.replace('/', '__')}"
        if key not in f:
            raise KeyError(f"{model!r} not in {path}; models: {list(f['models'])}.")
        g = f[key]
        out = {k: g[k][()] for k in g}
        out.update({k: g.attrs[k] for k in g.attrs})
        out["noise_ceiling"] = f["noise_ceiling"][()]
        out["noise_ceiling_p"] = f["noise_ceiling_p"][()]
        out["n_test"] = int(f.attrs["n_test"])
    return out


def best_layers(scores):
    """Per (model, roi), the row of the layer chosen on the training images (``selected``).

    Parameters
    ----------
    scores : pandas.DataFrame
        ``scores.csv`` (:func:`score_table`).

    Returns
    -------
    best : pandas.DataFrame
        One row per (model, roi): the ``selected`` rows, whose ``score`` is the test score
        of a layer the test images did not choose.
    """
    if "selected" not in scores:
        raise KeyError("scores has no 'selected' column; it comes from score_table (or "
                       "mark_selected on a table with val_score).")
    return scores[scores["selected"].astype(bool)].reset_index(drop=True)


def fraction_of_ceiling(rows):
    """Test score as a fraction of the ROI's noise ceiling, where the ceiling is real.

    Parameters
    ----------
    rows : pandas.DataFrame
        With ``score``, ``noise_ceiling`` and ``noise_ceiling_null`` (scores.csv rows).

    Returns
    -------
    fraction : pandas.Series
        ``score / noise_ceiling``; NaN where the ceiling does not exceed its chance level
        (a ceiling at chance cannot scale anything).
    """
    real = rows["noise_ceiling"] > rows["noise_ceiling_null"]
    return (rows["score"] / rows["noise_ceiling"]).where(real)


