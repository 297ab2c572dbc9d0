"""One model of the zoo through the convergence analysis: features, ridge per layer, ROI rows.

Chapter 02 loops over the zoo, calls :func:`convergence_one_model` for each model and records
the models that fail; the data every model shares travel in a :class:`ConvergenceData`, the
feature and fit options in a :class:`EncodingOptions`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lib.encoding.fit import check_disjoint, encode_layers
from lib.encoding.options import EncodingOptions
from lib.encoding.rois import summarize_rois
from lib.encoding.zoo import count_parameters, n_hidden_states


@dataclass
class ConvergenceData:
    """What every model of the zoo is fitted to and scored against.

    Attributes
    ----------
    subject : lib.nsd.PreparedSubject
        Source of images and captions.
    Y_train : ndarray of shape (n_train, n_voxels)
        Repetition-averaged betas of the training images.
    train_ids : ndarray of shape (n_train,)
    Y_test : ndarray of shape (n_test, n_voxels)
        Repetition-averaged betas of the test images (they only score).
    test_ids : ndarray of shape (n_test,)
    masks : dict of str to ndarray of shape (n_voxels,) bool
        From :func:`lib.encoding.roi_masks`.
    ceiling : dict
        From :func:`lib.encoding.noise_ceilings`.
    cache_dir : Path
        Where the feature caches go.
    """

    subject: Any
    Y_train: np.ndarray
    train_ids: np.ndarray
    Y_test: np.ndarray
    test_ids: np.ndarray
    masks: dict
    ceiling: dict
    cache_dir: Path

    def __post_init__(self):
        check_disjoint(self.train_ids, self.test_ids)
        self.cache_dir = Path(self.cache_dir)

    @property
    def all_ids(self) -> np.ndarray:
        """Sorted ids of the training and test images, (n_train + n_test,)."""
        return np.union1d(self.train_ids, self.test_ids)


@dataclass
class ModelResult:
    """One model's outcome.

    Attributes
    ----------
    rows : list of dict
        Its ``scores.csv`` rows (one per layer and ROI; ``selected`` still False).
    maps : dict
        ``layers`` (n_layers,), ``score``, ``val_score``, ``alpha`` (n_layers, n_voxels).
    alpha_low : float
        Largest fraction, over layers, of voxels at the grid's smallest alpha.
    """

    rows: list
    maps: dict
    alpha_low: float


def check_quantization(zoo, options: EncodingOptions) -> None:
    """Stop before any work if the zoo's language models cannot be quantized as asked.

    Parameters
    ----------
    zoo : list of dict
        Zoo entries (``modality``).
    options : EncodingOptions
        ``quantize`` and ``device``.

    Raises
    ------
    ValueError
        An unknown option, or 8/4 bits without a CUDA GPU.
    """
    from lib.config import resolve_device
    from lib.features.sources import quantization_kwargs

    if any(e["modality"] == "language" for e in zoo):
        quantization_kwargs(options.quantize, resolve_device(options.device))


def model_features(entry: dict, subject, ids: np.ndarray, cache_dir,
                   options: EncodingOptions) -> dict[int, np.ndarray]:
    """Per-layer features of one zoo model, from its cache when present.

    Parameters
    ----------
    entry : dict
        Zoo entry.
    subject : lib.nsd.PreparedSubject
    ids : ndarray of shape (n_images,)
        Image ids (rows of the features, in this order).
    cache_dir : path-like
    options : EncodingOptions
        ``layers``, ``pooling``, ``batch_size``, ``device``, ``quantize``.

    Returns
    -------
    features : dict of int to ndarray of shape (n_images, n_features_layer)
        See :func:`lib.features.hidden.model_layer_features`.
    """
    from lib.features.hidden import model_layer_features

    return model_layer_features(entry, subject, ids, cache_dir, layers=options.layers,
                                pooling=options.pooling, batch_size=options.batch_size,
                                device=options.device, quantize=options.quantize)


def convergence_one_model(entry: dict, data: ConvergenceData,
                          options: EncodingOptions) -> ModelResult:
    """Features, ridge fits of every layer and ROI summaries of one zoo model.

    Prints the time spent on features and on ridge, and the fractions of voxels at the edges
    of the alpha grid.

    Parameters
    ----------
    entry : dict
        Zoo entry (:func:`lib.encoding.load_zoo`); ``n_params`` None is counted from the
        model's configuration.
    data : ConvergenceData
    options : EncodingOptions

    Returns
    -------
    result : ModelResult
    """
    t0 = time.perf_counter()
    feats = model_features(entry, data.subject, data.all_ids, data.cache_dir, options)
    t1 = time.perf_counter()
    results = encode_layers(feats, data.all_ids, data.Y_train, data.train_ids, data.Y_test,
                            data.test_ids, options)
    t2 = time.perf_counter()
    layer_ids = sorted(results)
    rows = _score_rows(entry, results, data)
    maps = {key: np.stack([results[i][key] for i in layer_ids])
            for key in ("score", "val_score", "alpha")}
    maps["layers"] = np.asarray(layer_ids)
    lo, hi = np.max([results[i]["alpha_edge"] for i in layer_ids], axis=0)
    print(f"{entry['name']}: {len(layer_ids)} layers, features {t1 - t0:.1f} s, "
          f"ridge {t2 - t1:.1f} s; voxels at the smallest / largest alpha: up to "
          f"{lo:.0%} / {hi:.0%} per layer")
    return ModelResult(rows=rows, maps=maps, alpha_low=lo)


def _score_rows(entry: dict, results: dict[int, dict], data: ConvergenceData) -> list[dict]:
    """``scores.csv`` rows of one model: every layer of ``results`` in every ROI of ``data``."""
    n_params = entry.get("n_params")
    if n_params is None:
        n_params = count_parameters(entry["path"], entry["modality"])
    layer_ids = sorted(results)
    n_layers = n_hidden_states(entry, layer_ids)
    rows = []
    for layer in layer_ids:
        score = summarize_rois(results[layer]["score"], data.masks)
        val = summarize_rois(results[layer]["val_score"], data.masks)
        for roi in data.masks:
            rows.append({
                "model": entry["name"], "family": entry["family"],
                "modality": entry["modality"], "n_params": n_params, "layer": layer,
                "roi": roi, "score": score[roi][0], "val_score": val[roi][0],
                "selected": False, "n_voxels": score[roi][1],
                "trained": bool(entry.get("trained", True)), "n_layers": n_layers,
                "depth": layer / max(n_layers - 1, 1),
                "noise_ceiling": data.ceiling["roi"][roi],
                "noise_ceiling_null": data.ceiling["roi_null"][roi],
            })
    return rows


def warn_low_alphas(results: dict, alphas=None, limit: float = 0.05) -> None:
    """One :class:`lib.ridge.AlphaGridWarning` for the models whose voxels chose the smallest alpha.

    The largest alpha is where voxels without predictable signal go (their prediction is the
    mean), so only the lower edge says that the grid is too narrow.

    Parameters
    ----------
    results : dict of str to ModelResult
        Per model name (``alpha_low``).
    alphas : array-like or None
        The grid (None: :data:`lib.ridge.DEFAULT_ALPHAS`).
    limit : float
        Warn when more than this fraction of voxels chose the smallest alpha in some layer.
    """
    import warnings

    from lib.ridge import DEFAULT_ALPHAS, AlphaGridWarning

    low = [f"{name} ({r.alpha_low:.0%})" for name, r in results.items() if r.alpha_low > limit]
    if low:
        smallest = min(DEFAULT_ALPHAS if alphas is None else alphas)
        warnings.warn(f"More than {limit:.0%} of the voxels chose the smallest alpha "
                      f"({smallest:g}) in some layer of: {', '.join(low)}; extend the grid "
                      "downwards.",
                      AlphaGridWarning, stacklevel=2)
