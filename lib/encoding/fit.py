"""One model's encoding fits: standardise and reduce features, ridge per layer, test scores.

For every layer, features of the training images predict the repetition-averaged betas of every
voxel (ridge regression, one alpha per voxel chosen by leave-one-out on the training images
only: one row per image, so the folds are grouped by image); the fit is scored on the test
images (shared1000) by the Pearson correlation per voxel. The Pearson r of the leave-one-out
predictions on the training images (``val_score``) is what chooses layers: the test images
choose nothing.
"""

from __future__ import annotations

import numpy as np

from lib.encoding.options import EncodingOptions
from lib.features.cache import rows_for


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
              options: EncodingOptions | None = None,
              return_prediction: bool = False) -> dict[str, np.ndarray]:
    """Fit a voxelwise ridge on training images and score it on test images.

    Parameters
    ----------
    X_train : ndarray of shape (n_train, n_features)
    Y_train : ndarray of shape (n_train, n_voxels)
    X_test : ndarray of shape (n_test, n_features)
    Y_test : ndarray of shape (n_test, n_voxels)
    options : EncodingOptions or None
        ``alphas``: ridge penalties, one chosen per voxel by leave-one-out on the training
        images (one row per image, so leave-one-out is grouped by image), ``None`` for
        :data:`lib.ridge.DEFAULT_ALPHAS`; ``device``; ``max_features``, ``reduction`` and
        ``seed``: reduce wider features (see :func:`reduce_features`). None: the defaults.
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

    o = EncodingOptions() if options is None else options
    alphas = np.asarray(DEFAULT_ALPHAS if o.alphas is None else o.alphas, dtype=float)
    X_train, X_test = standardize(np.asarray(X_train), np.asarray(X_test))
    if o.max_features is not None:
        X_train, X_test = reduce_features(X_train, X_test, o.max_features, o.reduction, o.seed)
    model = RidgeCV(alphas=alphas, alpha_per_target=True, device=o.device, warn_edge=None)
    model.fit(X_train, np.asarray(Y_train, dtype=np.float32))  # edges: warn_low_alphas reports
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


def check_disjoint(train_ids: np.ndarray, test_ids: np.ndarray) -> None:
    """Stop (``AssertionError``) when any test image is among the training images.

    Parameters
    ----------
    train_ids, test_ids : ndarray of shape (n_train,) and (n_test,)
        Image ids of the two splits.
    """
    leaked = np.intersect1d(train_ids, test_ids)
    assert leaked.size == 0, f"{leaked.size} test images are among the training images."


def encode_layers(features: dict[int, np.ndarray], feature_ids: np.ndarray,
                  Y_train: np.ndarray, train_ids: np.ndarray,
                  Y_test: np.ndarray, test_ids: np.ndarray, options: EncodingOptions | None = None,
                  return_prediction: bool = False) -> dict[int, dict[str, np.ndarray]]:
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
    options : EncodingOptions or None
    return_prediction : bool
        See :func:`fit_layer`.

    Returns
    -------
    results : dict of int to dict
        Per layer, the output of :func:`fit_layer`.
    """
    train_ids, test_ids = np.asarray(train_ids), np.asarray(test_ids)
    check_disjoint(train_ids, test_ids)
    rows_train = rows_for(feature_ids, train_ids)
    rows_test = rows_for(feature_ids, test_ids)
    return {layer: fit_layer(X[rows_train], Y_train, X[rows_test], Y_test, options,
                             return_prediction)
            for layer, X in sorted(features.items())}

