"""Stage 1: ridge regression from fMRI to BLIP-2 Q-Former query tokens.

All ``n_query x hidden`` values (32 x 768 = 24,576 targets on the real model) are predicted by
one multi-target ridge solve (:class:`lib.ridge.RidgeCV`), each with its own penalty chosen by
k-fold cross-validation on the training images only, with folds grouped by image (an image's
repeated trials never sit on both sides of a fold). Inputs are either repetition-averaged betas of
each image (``memory_size=1``, the default) or single trials together with the betas of their
``memory_size - 1`` neighbouring trials in the same run (``memory_direction`` "past", "future"
or "both"), as in the original study; the neighbours enter as extra blocks of the multi-block
ridge fit, so the concatenated design matrix is never built. When single trials are used, the
predictions for an image are averaged over its repetitions.

Notebook 03 runs the steps as cells: :func:`stage1_inputs` (samples), :func:`lookup_features`
(targets), :func:`fit_ridge_map` (ridge, image-grouped CV), :func:`stage1_settings` and
:func:`decoder_from_ridge` (the decoder), :func:`predict_by_image` (predictions per image);
:func:`fit_stage1` composes them for the code that refits a map (notebooks 04, 05, tests).

The fitted map is a :class:`lib.decoding.decoder.QueryTokenDecoder`; the decoder, its files and
the prediction files are in :mod:`lib.decoding.decoder`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lib.decoding.decoder import (
    QueryTokenDecoder,
    assert_no_test_ids,
)

DIRECTIONS = ("past", "future", "both")

#: Number of image-grouped cross-validation folds for the ridge penalties.
DEFAULT_CV_FOLDS = 5


def stage1_inputs(subject, split: str, memory_size: int = 1, memory_direction: str = "past",
                  roi: str | None = None, trials: bool | None = None):
    """fMRI inputs of one split.

    Parameters
    ----------
    subject : lib.nsd.PreparedSubject
    split : {"train", "test"}
    memory_size : int
        Number of trials per sample (1 = the trial itself).
    memory_direction : {"past", "future", "both"}
        Where the neighbouring trials come from.
    roi : str or None
        Restrict to an ROI (``subject.roi_names()``); None = all nsdgeneral voxels.
    trials : bool or None
        Single trials (True) or repetition-averaged betas (False); default: averaged when
        ``memory_size == 1``, trials otherwise.

    Returns
    -------
    blocks : list of ndarray of shape (n_samples, n_voxels)
        One block per trial of the window (a single block for averaged betas).
    nsd_ids : ndarray of shape (n_samples,)
    """
    if memory_size < 1:
        raise ValueError(f"memory_size must be >= 1, got {memory_size}")
    if memory_direction not in DIRECTIONS:
        raise ValueError(f"memory_direction must be one of {DIRECTIONS}, got {memory_direction!r}")
    if trials is None:
        trials = memory_size > 1
    if not trials:
        if memory_size > 1:
            raise ValueError("memory windows need single trials: set trials=True")
        X, ids = subject.averaged_betas(split, roi=roi)
        return [np.asarray(X, np.float32)], np.asarray(ids)
    blocks, ids = subject.memory_windows(split, memory_size, direction=memory_direction, roi=roi)
    return [np.asarray(b, np.float32) for b in blocks], np.asarray(ids)


def average_by_id(values: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average rows that share an id (e.g. predictions of an image's repeated trials).

    Parameters
    ----------
    values : ndarray of shape (n, ...)
    ids : ndarray of shape (n,)

    Returns
    -------
    means : ndarray of shape (n_unique, ...), float32
    unique_ids : ndarray of shape (n_unique,), sorted
    """
    uniq, inv = np.unique(ids, return_inverse=True)
    sums = np.zeros((len(uniq),) + values.shape[1:], np.float64)
    np.add.at(sums, inv, values)
    counts = np.bincount(inv, minlength=len(uniq)).reshape((-1,) + (1,) * (values.ndim - 1))
    return (sums / counts).astype(np.float32), uniq


def lookup_features(features: np.ndarray, feature_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows of ``features`` (stored in ``feature_ids`` order) for the nsd ids ``ids``."""
    from lib.features.cache import rows_for

    return features[rows_for(feature_ids, ids)]


@dataclass
class Stage1Result:
    """What :func:`fit_stage1` returns.

    Attributes
    ----------
    decoder : QueryTokenDecoder
    test_pred, test_true : ndarray of shape (n_test, n_query, hidden)
        Predictions (averaged over repeats when trials are used) and true Q-Former outputs.
    test_ids : ndarray of shape (n_test,)
    train_pred, train_true : ndarray of shape (n_train, n_query, hidden)
        In-sample predictions (for controls) and true features of the training images.
    train_ids : ndarray of shape (n_train,)
    best_alphas : ndarray of shape (n_query * hidden,)
    """

    decoder: object
    test_pred: np.ndarray
    test_true: np.ndarray
    test_ids: np.ndarray
    train_pred: np.ndarray
    train_true: np.ndarray
    train_ids: np.ndarray
    best_alphas: np.ndarray
    settings: dict = field(default_factory=dict)


def drop_images(blocks: list, ids: np.ndarray, exclude_ids: Sequence[int] | None):
    """Leave the samples of some training images out (e.g. stage 2's validation images).

    Parameters
    ----------
    blocks : list of ndarray of shape (n_samples, n_voxels)
        :func:`stage1_inputs` output; rows are removed one block at a time (peak memory = the
        data + one block).
    ids : ndarray of shape (n_samples,)
        nsd id of each sample.
    exclude_ids : sequence of int or None
        Images to leave out (None or empty: keep all).

    Returns
    -------
    blocks : list of ndarray of shape (n_kept, n_voxels)
    ids : ndarray of shape (n_kept,)
    """
    if exclude_ids is None or not len(exclude_ids):
        return blocks, ids
    keep = ~np.isin(ids, np.asarray(exclude_ids))
    for i in range(len(blocks)):
        blocks[i] = blocks[i][keep]
    return blocks, ids[keep]


def fit_ridge_map(blocks: list, ids: np.ndarray, targets: np.ndarray,
                  alphas: Sequence[float] | None = None, cv: int = DEFAULT_CV_FOLDS,
                  device: str = "auto"):
    """One multi-target ridge from the input blocks to every query-token value.

    Each target gets its own penalty, chosen by ``cv``-fold cross-validation grouped by image
    (scikit-learn's ``GroupKFold`` over ``ids``, in :meth:`lib.ridge.RidgeCV.fit`): an image's
    repeated trials, and with memory windows all its samples, fall in one fold. Pass training
    samples only. :class:`lib.ridge.RidgeCV` warns (``AlphaGridWarning``) when chosen penalties
    sit at an edge of the grid.

    Parameters
    ----------
    blocks : list of ndarray of shape (n_samples, n_voxels)
        Input blocks (:func:`stage1_inputs`); several blocks enter as blocks of one ridge
        design, never concatenated.
    ids : ndarray of shape (n_samples,)
        nsd id of each sample (the CV groups).
    targets : ndarray of shape (n_samples, n_query, hidden)
        True Q-Former outputs of each sample's image (:func:`lookup_features`).
    alphas : sequence of float or None
        Candidate penalties (default: :data:`lib.ridge.DEFAULT_ALPHAS`).
    cv : int
        Number of image-grouped folds.
    device : str
        Where the solve runs.

    Returns
    -------
    ridge : lib.ridge.RidgeCV
        Fitted: ``coef_`` (n_query * hidden, n_voxels_total), ``best_alphas_``.
    """
    from lib.ridge import DEFAULT_ALPHAS, RidgeCV

    if isinstance(cv, str) or not isinstance(cv, (int, np.integer)):
        raise TypeError(f"cv={cv!r}: stage 1 takes a number of image-grouped folds (e.g. 5); "
                        "leave-one-trial-out would put an image's repeats on both sides.")
    alphas = np.asarray(DEFAULT_ALPHAS if alphas is None else alphas, float)
    Y = np.asarray(targets, np.float32).reshape(len(ids), -1)
    ridge = RidgeCV(alphas=alphas, alpha_per_target=True, cv=int(cv), device=device, verbose=True)
    ridge.fit(blocks if len(blocks) > 1 else blocks[0], Y, groups=ids)
    return ridge


def stage1_settings(ridge, n_samples: int, memory_size: int = 1, memory_direction: str = "past",
                    roi: str | None = None, trials: bool | None = None,
                    exclude_ids: Sequence[int] | None = None) -> dict:
    """What a stage-1 decoder records in ``settings.json`` about its inputs and its ridge.

    Parameters
    ----------
    ridge : lib.ridge.RidgeCV
        Fitted by :func:`fit_ridge_map`.
    n_samples : int
        Number of training samples.
    memory_size, memory_direction, roi, trials
        See :func:`stage1_inputs`.
    exclude_ids : sequence of int or None
        Training images left out of the fit (:func:`drop_images`).

    Returns
    -------
    settings : dict
        ``memory_size``, ``memory_direction``, ``roi``, ``trials``, ``alphas``, ``cv``,
        ``cv_folds``, ``alpha_at_grid_edge_fraction``, ``n_train_samples``,
        ``n_excluded_images`` (JSON-serialisable; 04 and 05 refit from them).
    """
    return {
        "memory_size": int(memory_size), "memory_direction": memory_direction, "roi": roi,
        "trials": bool(memory_size > 1 if trials is None else trials),
        "alphas": [float(a) for a in ridge.alphas], "cv": int(ridge.cv),
        "cv_folds": f"{int(ridge.cv)} folds grouped by image (GroupKFold over nsd ids)",
        "alpha_at_grid_edge_fraction": float(sum(ridge.alpha_edge_fraction_)),
        "n_train_samples": int(n_samples),
        "n_excluded_images": 0 if exclude_ids is None else len(np.unique(exclude_ids)),
    }


def decoder_from_ridge(ridge, block_sizes: Sequence[int], n_query: int, hidden: int,
                       settings: dict | None = None) -> QueryTokenDecoder:
    """A :class:`QueryTokenDecoder` whose weight *is* ``ridge.coef_`` (no copy, float32).

    Parameters
    ----------
    ridge : lib.ridge.RidgeCV
        Fitted; ``coef_`` of shape (n_query * hidden, sum(block_sizes)).
    block_sizes : sequence of int
        Voxels of each input block (``[b.shape[1] for b in blocks]``).
    n_query, hidden : int
    settings : dict or None
        Saved with the weights (:func:`stage1_settings` and any extra entries).

    Returns
    -------
    decoder : QueryTokenDecoder
        In eval mode, on the CPU. Delete ``ridge`` afterwards: no second copy of the map.
    """
    decoder = QueryTokenDecoder([0], n_query, hidden, settings)  # no (n_out, p) zeros allocated
    decoder.block_sizes = [int(b) for b in block_sizes]
    coef = np.ascontiguousarray(ridge.coef_, dtype=np.float32)
    decoder.weight = nn.Parameter(torch.from_numpy(coef))
    decoder.bias = nn.Parameter(torch.from_numpy(np.asarray(ridge.intercept_, np.float32).copy()))
    return decoder.eval()


def predict_by_image(decoder, blocks: list, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted query tokens of each image, averaged over its samples (repeats, trials).

    Parameters
    ----------
    decoder : QueryTokenDecoder
    blocks : list of ndarray of shape (n_samples, n_voxels)
    ids : ndarray of shape (n_samples,)

    Returns
    -------
    pred : ndarray of shape (n_images, n_query, hidden), float32
    image_ids : ndarray of shape (n_images,), sorted
    """
    return average_by_id(decoder.predict(blocks), ids)


# size: 11 parameters: the data and the settings a refit passes back (see the docstring).
def fit_stage1(subject, features: np.ndarray, feature_ids: np.ndarray, memory_size: int = 1,
               memory_direction: str = "past", roi: str | None = None,
               alphas: Sequence[float] | None = None, cv: int = DEFAULT_CV_FOLDS,
               device: str = "auto", trials: bool | None = None,
               exclude_ids: Sequence[int] | None = None) -> Stage1Result:
    """Fit the ridge map fMRI -> query tokens on training images; predict the test images.

    The steps of notebook 03, in one call for the code that refits a stage-1 map from a saved
    run's settings (04's starting map without its validation images, 05's memory-direction
    effect, tests); its 11 parameters, over the house's 8, are the data and the settings such a
    refit passes back (:func:`stage1_settings`).

    Parameters
    ----------
    subject : lib.nsd.PreparedSubject
    features : ndarray of shape (n_images, n_query, hidden)
        True Q-Former outputs (:func:`lib.features.qformer.extract_qformer_features`).
    feature_ids : ndarray of shape (n_images,)
        nsd id of each row of ``features``.
    memory_size, memory_direction, roi, trials
        See :func:`stage1_inputs`.
    alphas, cv, device
        See :func:`fit_ridge_map`.
    exclude_ids : sequence of int or None
        Training images left out of the fit (:func:`drop_images`).

    Returns
    -------
    result : Stage1Result
        ``settings``: :func:`stage1_settings` and ``best_alpha_median``.
    """
    from lib.config import resolve_device

    features, feature_ids = np.asarray(features, np.float32), np.asarray(feature_ids)
    X, ids = drop_images(*stage1_inputs(subject, "train", memory_size, memory_direction, roi,
                                        trials), exclude_ids)
    assert_no_test_ids(ids, subject.image_ids("test"), "the stage-1 training samples")
    ridge = fit_ridge_map(X, ids, lookup_features(features, feature_ids, ids), alphas, cv, device)
    best = np.asarray(ridge.best_alphas_, float)
    decoder = decoder_from_ridge(ridge, [b.shape[1] for b in X], *features.shape[1:], {
        **stage1_settings(ridge, len(ids), memory_size, memory_direction, roi, trials,
                          exclude_ids),
        "best_alpha_median": float(np.median(best))})
    del ridge
    decoder.to(resolve_device(device))  # predictions where the solve ran (CPU: a no-op)
    train_pred, train_ids = predict_by_image(decoder, X, ids)
    del X
    test_pred, test_ids = predict_by_image(
        decoder, *stage1_inputs(subject, "test", memory_size, memory_direction, roi, trials))
    return Stage1Result(
        decoder=decoder.cpu(), test_pred=test_pred,
        test_true=lookup_features(features, feature_ids, test_ids), test_ids=test_ids,
        train_pred=train_pred, train_true=lookup_features(features, feature_ids, train_ids),
        train_ids=train_ids, best_alphas=best, settings=decoder.settings,
    )


def correlation_map(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r across images for every (query token, dimension).

    Parameters
    ----------
    pred, true : ndarray of shape (n_images, n_query, hidden)

    Returns
    -------
    r : ndarray of shape (n_query, hidden)
    """
    from lib.scoring import pearson_r

    n = len(pred)
    return np.asarray(pearson_r(true.reshape(n, -1), pred.reshape(n, -1))).reshape(pred.shape[1:])


def cosine_matrix(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Cosine similarity between flattened predicted and true embeddings.

    Parameters
    ----------
    pred : ndarray of shape (n, n_query, hidden)
    true : ndarray of shape (m, n_query, hidden)

    Returns
    -------
    sim : ndarray of shape (n, m)
    """
    a = pred.reshape(len(pred), -1).astype(np.float64)
    b = true.reshape(len(true), -1).astype(np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-12
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-12
    return a @ b.T


def qformer_cache_path(derived_root, dataset, subject, blip2_model) -> Path:
    """Cache file of a checkpoint's Q-Former features for one subject.

    For a local checkpoint folder the name carries a fingerprint of its files, and once the
    subject is prepared it carries one of its stimulus file
    (:meth:`lib.nsd.PreparedSubject.input_fingerprint`), so features of a retrained model or
    of rebuilt stimuli (e.g. a rebuilt toy world) are never confused with stale ones.
    """
    from lib.config import stage_dir, subject_dir
    from lib.features.hidden import model_fingerprint
    from lib.nsd import PreparedSubject

    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(str(blip2_model)).name)
    slug += model_fingerprint(blip2_model)
    if (subject_dir(derived_root, dataset, subject) / "prepared.h5").is_file():
        slug += PreparedSubject.open(derived_root, dataset, subject).input_fingerprint("vision")
    return stage_dir(derived_root, dataset, subject, "features") / f"qformer_{slug}.h5"
