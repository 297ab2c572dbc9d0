"""Neural predictivity: voxelwise ridge encoding models from model features, per layer and ROI.

For every model of a zoo and every layer, features of the training images predict the
repetition-averaged betas of every voxel (ridge regression, one alpha per voxel chosen by
leave-one-out on the training images only: one row per image, so the folds are grouped by
image); the fit is scored on the test images (shared1000) by the Pearson correlation per voxel,
then summarised per ROI. The Pearson r of the leave-one-out predictions on the training images
(``val_score``) chooses the best layer of every model and ROI (``selected``): no choice sees
the test images. The noise ceiling of each ROI (:func:`lib.scoring.noise_ceiling`, from the
test images' repetitions) with its chance level gives the context.

The analysis code is the same for the real NSD and the toy world: only the zoo and the
paths differ.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lib.features.cache import rows_for

#: ROIs summarised by default (``PreparedSubject.roi_mask`` names).
DEFAULT_ROIS = ("V1", "V2", "V3", "hV4", "faces", "bodies", "places", "words", "nsdgeneral")
#: Early visual and category-selective ROIs (for the peak-layer comparison).
EARLY_ROIS = ("V1", "V2", "V3", "hV4")
CATEGORY_ROIS = ("faces", "bodies", "places", "words")
#: Columns of ``convergence/scores.csv`` (DESIGN.md section 5), then the extra ones.
SCORE_COLUMNS = ["model", "family", "modality", "n_params", "layer", "roi", "score", "val_score",
                 "selected", "n_voxels"]
EXTRA_COLUMNS = ["trained", "n_layers", "depth", "noise_ceiling", "noise_ceiling_null"]
#: ``convergence/failed_models.csv``: models that failed (``status`` "failed") or were skipped
#: ("skipped": gated without a login), with the error and a hint; the analysis goes on without.
FAILED_FILE = "failed_models.csv"
FAILED_COLUMNS = ["model", "error", "hint", "status", "family", "modality", "path"]


# --------------------------------------------------------------------------------------
# Zoo
# --------------------------------------------------------------------------------------

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
        e = dict(e)
        for key in ("name", "path"):
            if key not in e:
                raise ValueError(f"Zoo entry {e} lacks {key!r}.")
        e.setdefault("family", e["name"])
        e.setdefault("modality", modality or "vision")
        e.setdefault("n_params", None)
        e.setdefault("trained", True)
        e.setdefault("gated", False)
        if modality is not None and e["modality"] != modality:
            continue
        p = Path(str(e["path"])).expanduser()
        if models_root is not None and not p.is_absolute() and (Path(models_root) / p).exists():
            e["path"] = str(Path(models_root) / p)
        else:
            e["path"] = str(e["path"])
        out.append(e)
    return out


def count_parameters(path, modality: str = "vision") -> int:
    """Number of parameters of the network features are taken from, without loading weights.

    The model is built from its configuration on PyTorch's ``meta`` device (no memory, no
    weights): the base ``AutoModel`` for vision (the vision tower of dual encoders such as
    CLIP), ``AutoModelForCausalLM`` for language. Works for local folders and, when their
    configuration is reachable or cached, hub ids.
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


# --------------------------------------------------------------------------------------
# One layer
# --------------------------------------------------------------------------------------

def standardize(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Z-score features with the training images' mean and standard deviation only.

    Parameters
    ----------
    X_train : ndarray of shape (n_train, n_features)
    X_test : ndarray of shape (n_test, n_features)

    Returns
    -------
    X_train, X_test : float32 ndarrays; constant features become 0.
    """
    mean = X_train.mean(axis=0, dtype=np.float64)
    std = X_train.std(axis=0, dtype=np.float64)
    std[std < 1e-12] = 1.0
    return (((X_train - mean) / std).astype(np.float32),
            ((X_test - mean) / std).astype(np.float32))


def reduce_features(X_train: np.ndarray, X_test: np.ndarray, n_components: int,
                    method: str = "pca", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reduce very wide features, fitted on the training images only.

    Parameters
    ----------
    X_train : ndarray of shape (n_train, n_features)
    X_test : ndarray of shape (n_test, n_features)
    n_components : int
        Output width (no-op when the features are not wider).
    method : {"pca", "random"}
        PCA of the training features, or a Gaussian random projection.
    seed : int

    Returns
    -------
    X_train, X_test : ndarrays of shape (n, min(n_components, n_features))
    """
    if X_train.shape[1] <= n_components:
        return X_train, X_test
    if method == "random":
        rng = np.random.default_rng(seed)
        proj = rng.standard_normal((X_train.shape[1], n_components)).astype(np.float32)
        proj /= np.sqrt(n_components)
        return X_train @ proj, X_test @ proj
    if method == "pca":
        from sklearn.decomposition import PCA

        k = min(n_components, X_train.shape[0])
        pca = PCA(n_components=k, random_state=seed).fit(X_train)
        return pca.transform(X_train).astype(np.float32), pca.transform(X_test).astype(np.float32)
    raise ValueError(f"method must be 'pca' or 'random', got {method!r}.")


def fit_layer(X_train: np.ndarray, Y_train: np.ndarray, X_test: np.ndarray, Y_test: np.ndarray,
              alphas=None, device: str = "auto", max_features: int | None = None,
              reduction: str = "pca", seed: int = 0,
              return_prediction: bool = False) -> dict[str, np.ndarray]:
    """Fit a voxelwise ridge on training images and score it on test images.

    Parameters
    ----------
    X_train : ndarray of shape (n_train, n_features)
    Y_train : ndarray of shape (n_train, n_voxels)
    X_test : ndarray of shape (n_test, n_features)
    Y_test : ndarray of shape (n_test, n_voxels)
    alphas : array-like or None
        Ridge penalties; one is chosen per voxel by leave-one-out on the training images
        (one row per image, so leave-one-out is grouped by image). ``None`` uses
        :data:`lib.ridge.DEFAULT_ALPHAS`.
    device : str
    max_features : int or None
        Reduce wider features to this many (see :func:`reduce_features`).
    reduction : {"pca", "random"}
    seed : int
    return_prediction : bool
        Also return the test predictions.

    Returns
    -------
    result : dict
        ``score`` (n_voxels,) test Pearson r; ``alpha`` (n_voxels,) chosen alphas;
        ``val_score`` (n_voxels,) Pearson r of the leave-one-out predictions of the training
        images at the chosen alpha (the selection criterion); ``alpha_edge`` (fractions of
        voxels at the grid's smallest and largest alpha); with ``return_prediction``,
        ``prediction`` (n_test, n_voxels).
    """
    from lib.ridge import DEFAULT_ALPHAS, RidgeCV
    from lib.scoring import pearson_r

    alphas = np.asarray(DEFAULT_ALPHAS if alphas is None else alphas, dtype=float)
    X_train, X_test = standardize(np.asarray(X_train), np.asarray(X_test))
    if max_features is not None:
        X_train, X_test = reduce_features(X_train, X_test, max_features, reduction, seed)
    model = RidgeCV(alphas=alphas, alpha_per_target=True, device=device, warn_edge=None)
    model.fit(X_train, np.asarray(Y_train, dtype=np.float32))  # edges: run_convergence reports
    pred = np.asarray(model.predict(X_test))
    best = np.searchsorted(model.alphas_, model.best_alphas_)
    val = model.cv_r_[best, np.arange(model.cv_r_.shape[1])]
    out = {"score": np.asarray(pearson_r(np.asarray(Y_test), pred), dtype=np.float32),
           "alpha": np.asarray(model.best_alphas_, dtype=np.float32),
           "val_score": np.asarray(val, dtype=np.float32),
           "alpha_edge": model.alpha_edge_fraction_}
    if return_prediction:
        out["prediction"] = pred
    return out


def encode_layers(features: dict[int, np.ndarray], feature_ids: np.ndarray,
                  Y_train: np.ndarray, train_ids: np.ndarray,
                  Y_test: np.ndarray, test_ids: np.ndarray,
                  **fit_kwargs) -> dict[int, dict[str, np.ndarray]]:
    """Fit and score every layer of one model.

    Parameters
    ----------
    features : dict of int to ndarray of shape (n_images, n_features_layer)
        Rows in the order of ``feature_ids``.
    feature_ids : ndarray of shape (n_images,)
        Image ids of the feature rows (must contain all train and test ids).
    Y_train : ndarray of shape (n_train, n_voxels)
    train_ids : ndarray of shape (n_train,)
    Y_test : ndarray of shape (n_test, n_voxels)
    test_ids : ndarray of shape (n_test,)
    **fit_kwargs
        Passed to :func:`fit_layer`.

    Returns
    -------
    results : dict of int to dict
        Per layer, the output of :func:`fit_layer`.
    """
    train_ids, test_ids = np.asarray(train_ids), np.asarray(test_ids)
    leaked = np.intersect1d(train_ids, test_ids)
    assert leaked.size == 0, f"{leaked.size} test images are among the training images."
    rows_train = rows_for(feature_ids, train_ids)
    rows_test = rows_for(feature_ids, test_ids)
    return {layer: fit_layer(X[rows_train], Y_train, X[rows_test], Y_test, **fit_kwargs)
            for layer, X in sorted(features.items())}



# --------------------------------------------------------------------------------------
# ROIs and noise ceiling
# --------------------------------------------------------------------------------------

def roi_masks(subject, rois: Sequence[str] = DEFAULT_ROIS) -> dict[str, np.ndarray]:
    """Boolean voxel masks of the ROIs the subject has (others are skipped with a note).

    Returns
    -------
    masks : dict of str to ndarray of shape (n_voxels,) bool
    """
    masks = {}
    for roi in rois:
        try:
            mask = np.asarray(subject.roi_mask(roi), dtype=bool)
        except KeyError as err:
            print(f"ROI {roi!r} skipped: {err}")
            continue
        if mask.any():
            masks[roi] = mask
    return masks


def summarize_rois(values: np.ndarray,
                   masks: dict[str, np.ndarray]) -> dict[str, tuple[float, int]]:
    """Mean of a per-voxel map within each ROI.

    Parameters
    ----------
    values : ndarray of shape (n_voxels,)
    masks : dict of str to ndarray of shape (n_voxels,) bool

    Returns
    -------
    summary : dict of str to (mean, n_voxels); NaN voxels are ignored.
    """
    out = {}
    for roi, mask in masks.items():
        v = values[mask]
        v = v[np.isfinite(v)]
        out[roi] = (float(v.mean()) if v.size else float("nan"), int(mask.sum()))
    return out


def noise_ceilings(subject, masks: dict[str, np.ndarray], split: str = "test",
                   n_permutations: int = 100, seed: int = 0) -> dict:
    """Noise ceiling of every voxel and ROI for the repetition-averaged betas a model is scored on.

    :func:`lib.scoring.noise_ceiling` with ``n_average`` the typical number of repetitions of
    the split's images. ROI values are pooled over the ROI's voxels (ratio of their mean
    signal and noise variances, no clipping) and given on the scale of the scores,
    ``sqrt(max(NC, 0))``: the Pearson r a perfect model could expect. Their chance level is the
    95th percentile of the same number with image labels shuffled across repeats
    (:func:`lib.scoring.noise_ceiling_null`).

    Returns
    -------
    result : dict
        ``voxel`` (n_voxels,) noise ceiling of every voxel (fraction of variance, unclipped),
        ``p_value`` (n_voxels,) its ANOVA F-test, ``roi`` {name: ceiling as r},
        ``roi_null`` {name: chance level as r}, ``n_average`` and ``n_images``.
    """
    from lib.scoring import noise_ceiling, noise_ceiling_null, noise_ceiling_pvalues

    reps = subject.repeats(split)
    counts = np.isfinite(reps[:, :, 0]).sum(axis=1)
    n_average = max(1, int(round(float(np.median(counts)))))
    def as_r(nc):
        return np.sqrt(np.clip(nc, 0.0, 1.0))

    roi, roi_null = {}, {}
    for name, mask in masks.items():
        sub = reps[:, :, mask]
        roi[name] = float(as_r(noise_ceiling(sub, n_average, pooled=True)))
        null = noise_ceiling_null(sub, n_average, pooled=True, n_permutations=n_permutations,
                                  seed=seed)
        roi_null[name] = float(as_r(np.percentile(null, 95)))
    return {"voxel": noise_ceiling(reps, n_average).astype(np.float32),
            "p_value": noise_ceiling_pvalues(reps), "roi": roi, "roi_null": roi_null,
            "n_average": n_average, "n_images": int((counts >= 2).sum())}


# --------------------------------------------------------------------------------------
# The whole analysis
# --------------------------------------------------------------------------------------

def run_convergence(subject, zoo: Sequence[dict], out_dir, cache_dir=None,
                    rois: Sequence[str] = DEFAULT_ROIS, alphas=None, layers=None,
                    pooling: str = "mean", batch_size: int = 32, device: str = "auto",
                    max_features: int | None = None, reduction: str = "pca", seed: int = 0,
                    quantize: str | None = None):
    """Neural predictivity of every model and layer of a zoo, per voxel and ROI.

    A model that fails to load or run is reported, not fatal: it goes to
    ``out_dir/failed_models.csv`` (:data:`FAILED_COLUMNS`: name, error, hint) and the others
    are analysed. A gated hub model (``gated: true``) is skipped there when no hub login is
    configured and it is not in the local cache.

    Parameters
    ----------
    subject : lib.nsd.PreparedSubject
    zoo : list of dict
        Entries from :func:`load_zoo` (vision and language together).
    out_dir : path-like
        Stage folder (``stage_dir(derived_root, dataset, subject, "convergence")``); receives
        ``scores.csv``, ``failed_models.csv``, ``voxel_scores.h5`` and ``features/`` (the
        caches, unless ``cache_dir``).
    cache_dir : path-like or None
        Where the feature caches go.
    rois : sequence of str
    alphas : array-like or None
        Ridge penalties (see :func:`fit_layer`).
    layers : None, int or sequence of int
        Layer selection for every model (see :func:`lib.features.hidden.select_layers`).
    pooling : {"mean", "cls", "grid<k>"}
        Pooling of vision features (see :func:`lib.features.hidden.pool_hidden_state`);
        ``"grid4"`` keeps a 4 x 4 map of where things are, which retinotopic cortex needs.
    batch_size, device, max_features, reduction, seed
        See :func:`lib.features.hidden.model_layer_features` and :func:`fit_layer`.
    quantize : {None, "8bit", "4bit"}
        Load language models in 8 or 4 bits (CUDA and bitsandbytes only; checked first).

    Returns
    -------
    scores : pandas.DataFrame
        One row per (model, layer, roi), columns :data:`SCORE_COLUMNS` then
        :data:`EXTRA_COLUMNS`; also written to ``out_dir/scores.csv``.

    Raises
    ------
    RuntimeError
        When no model of the zoo ran (the message lists every failure and its hint).
    """
    import pandas as pd

    from lib.config import resolve_device
    from lib.features.sources import quantization_kwargs
    from lib.io import atomic_path

    if any(e["modality"] == "language" for e in zoo):
        quantization_kwargs(quantize, resolve_device(device))  # a bad option stops the run here
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir / "features"
    Y_train, train_ids = subject.averaged_betas("train")
    Y_test, test_ids = subject.averaged_betas("test")
    assert np.intersect1d(train_ids, test_ids).size == 0, "test images among training images"
    data = {"all_ids": np.union1d(train_ids, test_ids), "Y_train": Y_train,
            "train_ids": train_ids, "Y_test": Y_test, "test_ids": test_ids}
    masks = roi_masks(subject, rois)
    ceiling = noise_ceilings(subject, masks, "test", seed=seed)
    options = {"layers": layers, "pooling": pooling, "batch_size": batch_size, "device": device,
               "alphas": alphas, "max_features": max_features, "reduction": reduction,
               "seed": seed, "quantize": quantize}

    rows, maps, edges, failures = [], {}, [], []
    for entry in zoo:
        failure = _skip_gated(entry)
        if failure is None:
            try:
                model_rows, maps[entry["name"]], lo = _convergence_one(
                    entry, subject, data, masks, ceiling, cache_dir, options)
                rows += model_rows
                edges.append((entry["name"], lo))
                continue
            except AssertionError:  # a science guard (e.g. a test-set leak) stops everything
                raise
            except Exception as err:  # noqa: BLE001 - reported per model, the others go on
                failure = _failure_row(entry, err)
                _release_memory()
        failures.append(failure)
        print(f"{entry['name']}: {failure['status']}: {failure['error']}\n"
              f"  hint: {failure['hint']}")
    failed = pd.DataFrame(failures, columns=FAILED_COLUMNS)
    with atomic_path(out_dir / FAILED_FILE) as tmp:
        failed.to_csv(tmp, index=False)
    if not rows:
        raise RuntimeError(f"No model of the zoo ran ({len(failures)} failed or skipped; see "
                           f"{out_dir / FAILED_FILE}):\n" + "\n".join(
                               f"  {f['model']}: {f['error']} -> {f['hint']}" for f in failures))
    _warn_low_alphas(edges, alphas)
    scores = mark_selected(pd.DataFrame(rows, columns=SCORE_COLUMNS + EXTRA_COLUMNS))
    with atomic_path(out_dir / "scores.csv") as tmp:
        scores.to_csv(tmp, index=False)
    write_voxel_scores(out_dir / "voxel_scores.h5", subject, maps, ceiling, zoo,
                       n_test=len(test_ids))
    return scores


def _convergence_one(entry: dict, subject, data: dict, masks: dict, ceiling: dict, cache_dir,
                     options: dict) -> tuple[list[dict], dict, float]:
    """Features, ridge fits and ROI summaries of one zoo model.

    Returns its ``scores.csv`` rows, its per-voxel maps (``layers``, ``score``,
    ``val_score``, ``alpha``) and the largest fraction of voxels at the smallest alpha.
    """
    from lib.features.hidden import model_layer_features

    o = options
    t0 = time.perf_counter()
    feats = model_layer_features(entry, subject, data["all_ids"], cache_dir, layers=o["layers"],
                                 pooling=o["pooling"], batch_size=o["batch_size"],
                                 device=o["device"], quantize=o["quantize"])
    t1 = time.perf_counter()
    results = encode_layers(feats, data["all_ids"], data["Y_train"], data["train_ids"],
                            data["Y_test"], data["test_ids"], alphas=o["alphas"],
                            device=o["device"], max_features=o["max_features"],
                            reduction=o["reduction"], seed=o["seed"])
    t2 = time.perf_counter()
    n_params = entry.get("n_params")
    if n_params is None:
        n_params = count_parameters(entry["path"], entry["modality"])
    layer_ids = sorted(results)
    n_layers = _n_hidden(entry, layer_ids)
    rows = []
    for layer in layer_ids:
        score = summarize_rois(results[layer]["score"], masks)
        val = summarize_rois(results[layer]["val_score"], masks)
        for roi in masks:
            rows.append({
                "model": entry["name"], "family": entry["family"],
                "modality": entry["modality"], "n_params": n_params, "layer": layer,
                "roi": roi, "score": score[roi][0], "val_score": val[roi][0],
                "selected": False, "n_voxels": score[roi][1],
                "trained": bool(entry.get("trained", True)), "n_layers": n_layers,
                "depth": layer / max(n_layers - 1, 1),
                "noise_ceiling": ceiling["roi"][roi],
                "noise_ceiling_null": ceiling["roi_null"][roi],
            })
    maps = {key: np.stack([results[i][key] for i in layer_ids])
            for key in ("score", "val_score", "alpha")}
    maps["layers"] = np.asarray(layer_ids)
    lo, hi = np.max([results[i]["alpha_edge"] for i in layer_ids], axis=0)
    print(f"{entry['name']}: {len(layer_ids)} layers, features {t1 - t0:.1f} s, "
          f"ridge {t2 - t1:.1f} s; voxels at the smallest / largest alpha: up to "
          f"{lo:.0%} / {hi:.0%} per layer")
    return rows, maps, lo


def _skip_gated(entry: dict) -> dict | None:
    """The failed_models.csv row of a gated model that cannot be used here (else None)."""
    from lib.features.sources import gated_hint, hub_token_configured, locate_model

    if not entry.get("gated") or hub_token_configured() or locate_model(entry["path"]).ok:
        return None
    return {"model": entry["name"], "status": "skipped",
            "error": "gated model and no Hugging Face login configured",
            "hint": gated_hint(entry["path"]), "family": entry["family"],
            "modality": entry["modality"], "path": str(entry["path"])}


def _failure_row(entry: dict, err: BaseException) -> dict:
    """The failed_models.csv row of a model that raised ``err``."""
    from lib.features.sources import failure_hint

    message = " ".join(str(err).split())
    return {"model": entry["name"], "status": "failed",
            "error": f"{type(err).__name__}: {message[:500]}",
            "hint": failure_hint(err, entry["path"]), "family": entry["family"],
            "modality": entry["modality"], "path": str(entry["path"])}


def _release_memory() -> None:
    """Free what a failed model left behind (GPU memory above all) before the next one."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def read_failed_models(out_dir):
    """``failed_models.csv`` of a convergence run (:func:`run_convergence`).

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


def _warn_low_alphas(edges, alphas, limit: float = 0.05) -> None:
    """One :class:`lib.ridge.AlphaGridWarning` for the models whose voxels chose the smallest alpha.

    The largest alpha is where voxels without predictable signal go (their prediction is the
    mean), so only the lower edge says that the grid is too narrow.
    """
    import warnings

    from lib.ridge import DEFAULT_ALPHAS, AlphaGridWarning

    low = [f"{name} ({lo:.0%})" for name, lo in edges if lo > limit]
    if low:
        smallest = min(DEFAULT_ALPHAS if alphas is None else alphas)
        warnings.warn(f"More than {limit:.0%} of the voxels chose the smallest alpha "
                      f"({smallest:g}) in some layer of: {', '.join(low)}; "
                      "extend the grid downwards.",
                      AlphaGridWarning, stacklevel=3)


def _n_hidden(entry: dict, layer_ids: list[int]) -> int:
    """Number of hidden states of a model (from its config when available)."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(entry["path"])
        config = getattr(config, "vision_config", None) or getattr(config, "text_config",
                                                                     None) or config
        if getattr(config, "depths", None):  # conv nets: stem + stages
            return len(config.depths) + 1
        n = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
        if n:
            return int(n) + 1
    except Exception:  # noqa: BLE001 - the layer ids are a fine fallback
        pass
    return max(layer_ids) + 1


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
    """
    import h5py

    from lib.io import atomic_path

    info = {e["name"]: e for e in zoo}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
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
    """Read one model's maps from ``voxel_scores.h5`` (see :func:`write_voxel_scores`)."""
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


# --------------------------------------------------------------------------------------
# Summaries and the checks of what the toy world built in
# --------------------------------------------------------------------------------------

def best_layers(scores):
    """Per (model, roi), the row of the layer chosen on the training images (``selected``).

    Parameters
    ----------
    scores : pandas.DataFrame
        ``scores.csv`` (:func:`run_convergence`).

    Returns
    -------
    best : pandas.DataFrame
        One row per (model, roi): the ``selected`` rows, whose ``score`` is the test score
        of a layer the test images did not choose.
    """
    if "selected" not in scores:
        raise KeyError("scores has no 'selected' column; it comes from run_convergence (or "
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


def size_score_spearman(scores, roi: str = "nsdgeneral", trained_only: bool = True):
    """Spearman correlation between parameter count and selected-layer score, per family.

    The p-value is exact and one-sided: the share of the ``n!`` orderings of the family's
    scores whose correlation with size is at least the observed one. With three models a
    perfect ordering (rho = +1) has p = 1/6: size order alone cannot be significant in a
    family of three, and a null brain orders its models perfectly one time in six.

    Returns
    -------
    table : pandas.DataFrame
        ``family``, ``modality``, ``n_models``, ``rho``, ``p_value``, ``models`` (by size).
    """
    import pandas as pd

    best = best_layers(scores)
    best = best[best["roi"] == roi]
    if trained_only:
        best = best[best["trained"].astype(bool)]
    rows = []
    for (family, modality), g in best.groupby(["family", "modality"]):
        g = g.sort_values("n_params")
        if len(g) >= 2 and g["n_params"].nunique() > 1:
            rho, p = _spearman_exact(g["n_params"].to_numpy(), g["score"].to_numpy())
        else:
            rho, p = float("nan"), float("nan")
        rows.append({"family": family, "modality": modality, "n_models": len(g), "rho": rho,
                     "p_value": p,
                     "models": ", ".join(f"{m} ({s:.3f})" for m, s in zip(g["model"], g["score"]))})
    return pd.DataFrame(rows)


def _spearman_exact(x: np.ndarray, y: np.ndarray, max_exact: int = 8) -> tuple[float, float]:
    """Spearman rho of ``x`` and ``y`` (n,) and its one-sided permutation p-value (rho >= obs):
    exact over all orderings up to ``max_exact`` items, else 10,000 seeded permutations."""
    from itertools import permutations

    from scipy.stats import rankdata, spearmanr

    rho = float(spearmanr(x, y).statistic)
    rx, ry = rankdata(x), rankdata(y)
    if len(y) <= max_exact:
        orders = np.array(list(permutations(range(len(y)))))
    else:
        rng = np.random.default_rng(0)
        orders = np.array([rng.permutation(len(y)) for _ in range(10_000)])
    null = np.array([np.corrcoef(rx, ry[o])[0, 1] for o in orders])
    return rho, float(np.mean(null >= rho - 1e-12))


def trained_vs_untrained(scores, roi: str = "nsdgeneral"):
    """Each untrained (random-weight) model against the trained model of the same size.

    The untrained copy is the control: the same architecture and parameter count, so the
    difference measures what training adds. Best layers are chosen on training data.

    Returns
    -------
    table : pandas.DataFrame
        One row per untrained model: ``family``, ``modality``, ``n_params``, ``trained``
        (model name), ``untrained`` (model name), ``trained_score``, ``untrained_score``,
        ``difference`` (trained - untrained) and ``trained_layer``, ``untrained_layer``.
    """
    import pandas as pd

    best = best_layers(scores)
    best = best[best["roi"] == roi]
    is_trained = best["trained"].astype(bool)
    pairs = best[~is_trained].merge(best[is_trained], on=["family", "modality", "n_params"],
                                    suffixes=("_u", "_t"))
    rows = [{"family": r["family"], "modality": r["modality"], "n_params": r["n_params"],
             "trained": r["model_t"], "untrained": r["model_u"],
             "trained_score": r["score_t"], "untrained_score": r["score_u"],
             "difference": r["score_t"] - r["score_u"],
             "trained_layer": r["layer_t"], "untrained_layer": r["layer_u"]}
            for _, r in pairs.iterrows()]
    return pd.DataFrame(rows, columns=["family", "modality", "n_params", "trained", "untrained",
                                       "trained_score", "untrained_score", "difference",
                                       "trained_layer", "untrained_layer"])


def bootstrap_trained_vs_untrained(table, subject, zoo: Sequence[dict], cache_dir,
                                   roi: str = "nsdgeneral", n_boot: int = 1000,
                                   alphas=None, layers=None, pooling: str = "mean",
                                   batch_size: int = 32, device: str = "auto",
                                   max_features: int | None = None, reduction: str = "pca",
                                   seed: int = 0, quantize: str | None = None):
    """Add a bootstrap interval over test images to :func:`trained_vs_untrained`.

    The best layer of each model (chosen on training data) is refitted on the ROI's voxels
    from the cached features, and both models' test predictions are scored on the same
    resampled test images (:func:`lib.scoring.paired_bootstrap_mean_r`).

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`trained_vs_untrained` for the same ``roi``.
    subject, zoo, cache_dir
        As given to :func:`run_convergence` (``cache_dir`` is its ``out_dir / "features"`` by
        default), so the features come from the caches.
    roi : str
    n_boot : int
    alphas, layers, pooling, batch_size, device, max_features, reduction, seed, quantize
        As given to :func:`run_convergence`.

    Returns
    -------
    table : pandas.DataFrame
        ``table`` with ``ci_low``, ``ci_high`` (95% interval of the difference) and
        ``p_value`` (share of resamples in which the trained model does not win).
    """
    from lib.features.hidden import model_layer_features
    from lib.scoring import paired_bootstrap_mean_r

    mask = roi_masks(subject, [roi])[roi]
    Y_train, train_ids = subject.averaged_betas("train", roi=mask)
    Y_test, test_ids = subject.averaged_betas("test", roi=mask)
    all_ids = np.union1d(train_ids, test_ids)
    entries = {e["name"]: e for e in zoo}

    def predict(name, layer):
        feats = model_layer_features(entries[name], subject, all_ids, cache_dir, layers=layers,
                                     pooling=pooling, batch_size=batch_size, device=device,
                                     quantize=quantize)
        result = encode_layers({layer: feats[layer]}, all_ids, Y_train, train_ids, Y_test,
                               test_ids, alphas=alphas, device=device,
                               max_features=max_features, reduction=reduction, seed=seed,
                               return_prediction=True)
        return result[layer]["prediction"]

    table = table.copy()
    for col in ("ci_low", "ci_high", "p_value"):
        table[col] = np.nan
    for i, row in table.iterrows():
        boot = paired_bootstrap_mean_r(Y_test, predict(row["trained"], int(row["trained_layer"])),
                                       predict(row["untrained"], int(row["untrained_layer"])),
                                       n_boot=n_boot, seed=seed)
        for col in ("ci_low", "ci_high", "p_value"):
            table.loc[i, col] = boot[col]
    return table


def peak_depths(scores, early=EARLY_ROIS, category=CATEGORY_ROIS, modality: str = "vision",
                trained_only: bool = True):
    """Normalised depth of the best layer per ROI, early visual against category ROIs.

    The best layer is chosen on training data (:func:`best_layers`).

    Returns
    -------
    table : pandas.DataFrame
        One row per model: the peak depth (0 = embeddings, 1 = last layer) in every ROI,
        ``early`` and ``category`` (their means) and ``early_before_category`` (bool).
    """
    best = best_layers(scores)
    best = best[best["modality"] == modality]
    if trained_only:
        best = best[best["trained"].astype(bool)]
    table = best.pivot_table(index=["model", "family", "n_params"], columns="roi",
                             values="depth")
    e = [r for r in early if r in table.columns]
    c = [r for r in category if r in table.columns]
    table["early"] = table[e].mean(axis=1)
    table["category"] = table[c].mean(axis=1)
    table["early_before_category"] = table["early"] < table["category"]
    return table.reset_index().sort_values(["family", "n_params"])
