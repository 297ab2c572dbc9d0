""":class:`RidgeCV`: a scikit-learn estimator over the solvers of :mod:`lib.ridge.solvers`."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_array, check_consistent_length, check_is_fitted

from lib.ridge.backends import get_backend
from lib.ridge.cholesky import cholesky_is_accurate, loo_cholesky
from lib.ridge.design import Clock, Design, Targets, batches
from lib.ridge.kfold import kfold
from lib.ridge.machine import eigh_library, probe_blas
from lib.ridge.solvers import Options, loo_eigen
from lib.ridge.splits import cv_splits

#: The default alpha grid of the project (absolute ridge penalties, as in scikit-learn):
#: 0.1 to 1e7 in half-decade steps. Penalties act against the eigenvalues of the Gram matrix,
#: whose sum is n_samples x n_features for z-scored inputs: from hundreds of images x a few
#: hundred features (toy encoding) to ~10k trials x ~15k voxels (NSD stage 1). 0.1 leaves
#: any such fit practically unregularised; 1e7 shrinks the toy fits to the mean and reaches
#: the regime of NSD's stage-1 optima (1e4-1e6 in published ridge decoders). A fit whose
#: chosen alphas sit at an edge says so (:class:`AlphaGridWarning`).
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 7, 17))

_FLOATS = [np.float64, np.float32]


class AlphaGridWarning(UserWarning):
    """Many targets chose the smallest or the largest alpha of the grid."""


def _host(a):
    """torch tensors -> NumPy (CUDA tensors are copied to the host); other inputs as given."""
    return a.detach().cpu().numpy() if hasattr(a, "detach") else a


def _is_blocks(X) -> bool:
    """A list/tuple of 2-D feature blocks (as opposed to a list of rows)."""
    return isinstance(X, (list, tuple)) and len(X) > 0 and np.ndim(_host(X[0])) == 2


def _check_blocks(X) -> list[np.ndarray]:
    blocks = [check_array(_host(b), dtype=_FLOATS, input_name=f"X[{i}]")
              for i, b in enumerate(X)]
    for i, b in enumerate(blocks):
        if b.shape[0] != blocks[0].shape[0]:
            raise ValueError(f"feature block X[{i}] has {b.shape[0]} rows but block 0 has "
                             f"{blocks[0].shape[0]}; all blocks must describe the same samples.")
    return blocks


class RidgeCV(RegressorMixin, BaseEstimator):
    """Ridge regression for many targets with per-target (or shared) alpha selection.

    Parameters
    ----------
    alphas : sequence of float, default :data:`DEFAULT_ALPHAS` (``np.logspace(-1, 7, 17)``)
        Ridge penalties (absolute, as in scikit-learn: ``||y - Xw||^2 + alpha ||w||^2``).
    alpha_per_target : bool, default True
        Choose one alpha per target (minimum cross-validated MSE of that target). If False,
        one alpha for all targets, the one with the highest mean ``cv_scores_``.
    cv : "loo", int, iterable of (train, test) index pairs, or a splitter with ``split``
        ``"loo"``: exact efficient leave-one-out. int ``k``: contiguous k-fold (no
        shuffling), or ``GroupKFold(k)`` when ``fit`` gets ``groups``; a splitter is called
        as ``cv.split(X, y, groups)``. Folds that partition the samples get their held-out
        errors from one eigendecomposition (:func:`~lib.ridge.kfold.kfold_eigen`), other
        splits one per fold.
    fit_intercept : bool, default True
        Centre X and Y with their training means; the intercept is not penalised.
    device : {"auto", "cpu", "cuda", "cuda:N"}, default "auto"
        Device of the torch backends (``"auto"``: CUDA when available).
    dtype : {"float32", "float64"}, default "float32"
        Compute precision. ``"float64"`` matches scikit-learn to ~1e-10.
    target_batch_size : int or None
        Targets processed together; None sizes batches to about 512 MiB of work arrays.
    eigh_dtype : {"float32", "float64"} or None
        Precision of eigendecompositions; None uses ``dtype``.
    solver : {"auto", "eigen", "cholesky"}, default "auto"
        Leave-one-out in the dual form: ``"eigen"`` (:func:`~lib.ridge.solvers.loo_eigen`)
        or ``"cholesky"`` (:func:`~lib.ridge.cholesky.loo_cholesky`, one factorisation per
        alpha). ``"auto"``: eigen on the NumPy backend (OpenBLAS's ``syevd`` is fast and
        every alpha then costs one matrix product); on the torch backends (MKL's ``eigh``
        is slow) Cholesky for at most 10 alphas when it is accurate
        (:func:`~lib.ridge.cholesky.cholesky_is_accurate`). k-fold and the primal form
        always use eigendecompositions.
    verbose : bool, default False
        Progress bars and phase times on stderr.
    warn_edge : float or None, default 0.05
        Warn (:class:`AlphaGridWarning`) when more than this fraction of the targets chose
        the smallest or the largest alpha of the grid; None never warns.
    backend : {"auto", "numpy", "torch", "torch_cuda"}, default "auto"
        Array backend (:func:`lib.ridge.backends.get_backend`); ``"auto"`` picks CUDA when
        ``device`` resolves to it, else NumPy, unless ``$LIB_RIDGE_BACKEND`` names one.

    Attributes
    ----------
    coef_ : ndarray of shape (n_targets, n_features)
        With feature blocks, the blocks' columns in order (``coef_blocks()`` splits them).
    intercept_ : ndarray of shape (n_targets,)
    best_alphas_ : ndarray of shape (n_targets,)
    alpha_ : float or ndarray of shape (n_targets,)
        The shared alpha, or ``best_alphas_`` when ``alpha_per_target=True``.
    alphas_ : ndarray of shape (n_alphas,)
    cv_scores_ : ndarray of shape (n_alphas, n_targets)
        Negative mean squared leave-one-out (or held-out) error: higher is better.
    cv_r2_ : ndarray of shape (n_alphas, n_targets)
        ``1 - MSE / Var(y)`` (cross-validated R^2), derived from ``cv_scores_``.
    cv_r_ : ndarray of shape (n_alphas, n_targets)
        Pearson r of the held-out predictions with the targets, over all training samples.
    alpha_edge_fraction_ : tuple of float
        Fractions of targets whose chosen alpha is the grid's smallest and its largest.
    n_features_in_ : int
    block_sizes_ : list of int
    x_mean_ : ndarray of shape (n_features,)
    backend_ : str
        The backend that ran the fit.
    fit_info_ : dict
        ``form``, ``solver``, ``rank``, sizes, ``backend``, ``device``, ``dtype``, wall
        ``time_s``, ``phase_s`` (time per phase) and ``blas_gflops`` (the probe, if run).
    """

    def __init__(self, alphas: Sequence[float] = DEFAULT_ALPHAS, alpha_per_target: bool = True,
                 cv="loo", fit_intercept: bool = True, device: str = "auto",
                 dtype: str = "float32", target_batch_size: int | None = None,
                 eigh_dtype: str | None = None, solver: str = "auto", verbose: bool = False,
                 warn_edge: float | None = 0.05, backend: str = "auto"):
        self.alphas = alphas
        self.alpha_per_target = alpha_per_target
        self.cv = cv
        self.fit_intercept = fit_intercept
        self.device = device
        self.dtype = dtype
        self.target_batch_size = target_batch_size
        self.eigh_dtype = eigh_dtype
        self.solver = solver
        self.verbose = verbose
        self.warn_edge = warn_edge
        self.backend = backend

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> np.ndarray:
        alphas = np.asarray(self.alphas, dtype=np.float64).ravel()
        if alphas.size == 0 or np.any(alphas <= 0) or not np.all(np.isfinite(alphas)):
            raise ValueError("alphas must be a non-empty sequence of positive numbers; got "
                             f"{self.alphas!r}.")
        if self.solver not in ("auto", "eigen", "cholesky"):
            raise ValueError(f"solver={self.solver!r} is not one of 'auto', 'eigen', 'cholesky'.")
        for name in ("dtype", "eigh_dtype"):
            if getattr(self, name) not in ("float32", "float64") + ((None,) * (name != "dtype")):
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported; use "
                                 "'float32' or 'float64'.")
        return alphas

    def _check_fit_data(self, X, Y):
        """Validated (blocks, Y) as NumPy arrays; sets ``n_features_in_``."""
        if Y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target "
                             "y is None.")
        if _is_blocks(X):
            blocks = _check_blocks(X)
            Y = check_array(_host(Y), ensure_2d=False, dtype=_FLOATS, input_name="y")
            check_consistent_length(blocks[0], Y)
            self.n_features_in_ = sum(b.shape[1] for b in blocks)
        else:
            from sklearn.utils.validation import validate_data

            X, Y = validate_data(self, _host(X), _host(Y), multi_output=True, y_numeric=True,
                                 dtype=_FLOATS, ensure_min_samples=2)
            blocks = [X]
        if Y.ndim > 2:
            raise ValueError(f"Y must be 1-D or 2-D (n_samples, n_targets); got shape {Y.shape}.")
        if blocks[0].shape[0] < 2:
            raise ValueError("RidgeCV needs at least 2 samples; got 1 sample.")
        return blocks, Y

    def _check_groups(self, groups, n: int):
        if groups is not None and self.cv in ("loo", None):
            if np.unique(np.asarray(groups)).size != n:
                raise ValueError("cv='loo' leaves out single samples, but groups has samples "
                                 "sharing a group (e.g. repeats of an image); pass cv=k for "
                                 "GroupKFold(k) or average the repeats first.")
            return None
        return groups

    # ------------------------------------------------------------------ fit
    def fit(self, X, Y, groups=None):
        """Fit on training data, choosing an alpha per target (or one for all).

        Parameters
        ----------
        X : array-like or tensor of shape (n_samples, n_features), or a list of blocks
            (n_samples, p_1), (n_samples, p_2), ... sharing their rows (never concatenated).
        Y : array-like or tensor of shape (n_samples, n_targets) or (n_samples,)
        groups : array-like of shape (n_samples,) or None
            Group label of every sample (e.g. the image of every trial): no group is on
            both sides of a fold. Needs ``cv`` an int or a splitter; with ``cv="loo"`` only
            when every group is one sample.

        Returns
        -------
        self : RidgeCV
        """
        t0 = time.perf_counter()
        alphas = self._check_params()
        blocks, Y = self._check_fit_data(X, Y)
        groups = self._check_groups(groups, blocks[0].shape[0])
        bk = get_backend(self.backend, self.device)
        dt = bk.dtype(self.dtype)
        design = Design.from_blocks([bk.asarray(b, dt) for b in blocks], bk, self.fit_intercept)
        Y2 = Y.reshape(len(Y), -1)
        targets = Targets.from_array(Y2.astype(Y2.dtype if dt == bk.float64 else np.float32,
                                               copy=False), bk, dt, self.fit_intercept)
        opt = Options(self.alpha_per_target, self.target_batch_size,
                      None if self.eigh_dtype is None else bk.dtype(self.eigh_dtype), self.verbose)
        res = self._solve(design, targets, alphas, groups, opt)
        self._set_results(res, design, targets, alphas, Y.ndim == 1)
        self.backend_ = bk.name
        self.fit_info_ = {
            "form": "dual" if design.n <= design.p else "primal", "solver": res.solver,
            "rank": res.rank, "n_samples": design.n, "n_features": design.p,
            "n_targets": targets.t,
            "n_batches": len(batches(design.n, design.p, targets.t, res.rank or design.n,
                                     self.target_batch_size)),
            "backend": bk.name, "device": str(getattr(bk, "device", "cpu")),
            "dtype": self.dtype, "time_s": time.perf_counter() - t0, "phase_s": opt.times,
            "blas_gflops": probe_blas() if self.backend == "auto" and bk.name != "torch_cuda"
            else None,
            "eigh": eigh_library() if bk.name == "numpy" else bk.name,
        }
        return self

    def _solve(self, design, targets, alphas, groups, opt):
        """Run the solver that fits the settings; returns its CVResult."""
        if self.cv not in ("loo", None):
            return kfold(design, targets, alphas, cv_splits(self.cv, design.n, groups), opt)
        K, res = None, None
        # NumPy: OpenBLAS's syevd + matmuls beat 7 Cholesky routes (bench/README.md)
        chol = self.solver == "cholesky" or (self.solver == "auto" and design.bk.name != "numpy")
        if design.n <= design.p and chol:
            clock = Clock(design.bk, opt.times, opt.verbose)
            K = design.gram()
            use = self.solver == "cholesky" or (
                len(alphas) <= 10 and cholesky_is_accurate(K, alphas, design.bk))
            clock("gram")
            if use:
                res = loo_cholesky(design, targets, alphas, opt, K=K)
        return res if res is not None else loo_eigen(design, targets, alphas, opt, K=K)

    def _set_results(self, res, design, targets, alphas, y_1d: bool):
        bk = design.bk
        self.coef_ = res.coef
        x_mean = np.concatenate([bk.to_numpy(m) for m in design.means]).astype(np.float64)
        self.intercept_ = np.zeros(targets.t, dtype=res.coef.dtype)
        if self.fit_intercept:  # y_mean - coef @ x_mean in float64, by chunks of targets
            ym = bk.to_numpy(targets.mean).astype(np.float64)
            for j in range(0, targets.t, 4096):
                sl = slice(j, j + 4096)
                self.intercept_[sl] = ym[sl] - res.coef[sl].astype(np.float64) @ x_mean
        self.x_mean_ = x_mean.astype(res.coef.dtype)
        self.best_alphas_ = alphas[res.best]
        self.alpha_ = self.best_alphas_ if self.alpha_per_target else float(alphas[res.best[0]])
        self.alphas_ = alphas
        self.cv_scores_ = res.scores
        self.cv_r_ = res.cv_r
        self.block_sizes_ = [b.shape[1] for b in design.blocks]
        self._y_var = res.y_var
        self._y_1d = y_1d
        self._warn_edges(res.best, alphas)

    def _warn_edges(self, best, alphas):
        na = len(alphas)
        lo = float(np.mean(best == 0)) if na > 1 else 0.0
        hi = float(np.mean(best == na - 1)) if na > 1 else 0.0
        self.alpha_edge_fraction_ = (lo, hi)
        if self.warn_edge is not None and max(lo, hi) > self.warn_edge:
            warnings.warn(
                f"RidgeCV: the chosen alpha is the grid's smallest ({alphas[0]:g}) for {lo:.0%} "
                f"and its largest ({alphas[-1]:g}) for {hi:.0%} of {len(best)} targets. At the "
                "smallest, extend the grid downwards; at the largest, the targets may carry no "
                "predictable signal (their prediction is the mean) or need larger penalties.",
                AlphaGridWarning, stacklevel=4)

    @property
    def cv_r2_(self) -> np.ndarray:
        """Cross-validated R^2 ``1 + cv_scores_ / Var(y)``, (n_alphas, n_targets)."""
        check_is_fitted(self)
        var = np.where(self._y_var > 0, self._y_var, np.nan)
        return 1.0 + self.cv_scores_ / var[None, :]

    # ------------------------------------------------------------------ predict / score
    def coef_blocks(self) -> list[np.ndarray]:
        """``coef_`` split into one (n_targets, p_b) array per feature block given to fit."""
        check_is_fitted(self)
        offs = np.concatenate([[0], np.cumsum(self.block_sizes_)])
        return [self.coef_[:, offs[i] : offs[i + 1]] for i in range(len(self.block_sizes_))]

    def _check_predict_data(self, X) -> list[np.ndarray]:
        if _is_blocks(X):
            blocks = _check_blocks(X)
            sizes = [b.shape[1] for b in blocks]
            if sizes != list(self.block_sizes_):
                raise ValueError(f"X has feature blocks of sizes {sizes} but the model was fit "
                                 f"on {list(self.block_sizes_)}.")
            return blocks
        from sklearn.utils.validation import validate_data

        X = validate_data(self, _host(X), reset=False, dtype=_FLOATS)
        offs = np.cumsum(self.block_sizes_)[:-1]
        return np.split(X, offs, axis=1)

    def predict(self, X):
        """Predict targets.

        Parameters
        ----------
        X : array-like or tensor of shape (n_samples, n_features), or the list of blocks
            with the block sizes of ``fit``.

        Returns
        -------
        Y_pred : ndarray of shape (n_samples, n_targets), or (n_samples,) if fit on 1-D y
        """
        check_is_fitted(self)
        blocks = self._check_predict_data(X)
        bk = get_backend(self.backend_, self.device)
        dt = bk.dtype(self.dtype)
        out = None
        for b, cb in zip(blocks, self.coef_blocks()):
            part = bk.asarray(b, dt) @ bk.asarray(cb, dt).T
            out = part if out is None else out + part
        res = bk.to_numpy(out + bk.asarray(self.intercept_, dt)[None, :])
        return res[:, 0] if self._y_1d else res

    def score(self, X, y, sample_weight=None):
        """Coefficient of determination R^2 of the predictions, averaged over targets.

        As every scikit-learn regressor (:func:`sklearn.metrics.r2_score`,
        ``multioutput="uniform_average"``). The Pearson r of every target is
        :func:`lib.scoring.pearson_r` ``(y, model.predict(X))``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a list of feature blocks
        y : array-like of shape (n_samples, n_targets) or (n_samples,)
        sample_weight : array-like of shape (n_samples,) or None

        Returns
        -------
        score : float
        """
        return super().score(X, y, sample_weight=sample_weight)
