"""Multi-target ridge regression with alpha selection, on a torch backend.

:class:`RidgeCV` fits tens of thousands of targets (voxels, or the 32 x 768 BLIP-2
query-token values of the decoding stage) with a grid of regularisation strengths and
picks one alpha per target (or one shared alpha) by exact leave-one-out on the training
data, or by k-fold cross-validation.

Method
------
Let ``Xc`` be the centred design (training means; ``n`` samples, ``p`` features) with thin
SVD ``Xc = U diag(sqrt(s)) V^T`` restricted to its numerically non-zero spectrum
(rank ``r``). One symmetric eigendecomposition gives it:

- dual (kernel) form when ``n <= p``: ``K = Xc Xc^T = U diag(s) U^T`` (``n x n``);
- primal form when ``n > p``: ``G = Xc^T Xc = V diag(s) V^T`` (``p x p``),
  then ``U = Xc V diag(1/sqrt(s))``.

With ``C = U^T Yc`` (``r x t``), every alpha and every target follows from matrix
products:

- fitted values ``Yhat(alpha) = U diag(s/(s+alpha)) C`` (plus the training mean);
- hat-matrix diagonal ``h_i(alpha) = 1/n + sum_j U_ij^2 s_j/(s_j+alpha)`` (the ``1/n`` is
  the unpenalised intercept; it is absent with ``fit_intercept=False``);
- exact leave-one-out residuals ``e_i = (y_i - yhat_i) / (1 - h_i)``
  (the identity holds for any quadratic-penalty linear smoother, so these are the
  residuals of refitting without sample ``i``, intercept re-estimated);
- coefficients ``coef = W diag(1/(s+alpha_t)) C`` with ``W = Xc^T U = V diag(sqrt(s))``,
  or ``coef = Xc^T U diag(1/(s+alpha_t)) C`` (through dual coefficients) when that is
  fewer operations (many features, few targets).

On CPU, LAPACK's symmetric eigendecomposition runs far below matmul speed (at n = 3000 it
costs as much as ~15-20 square matmuls). For short alpha grids in the dual form,
``solver="auto"`` therefore factorises ``G = Kc + alpha I`` once per alpha instead
(Cholesky + inverse, BLAS-3): dual coefficients ``A = G^-1 Yc``, LOO residuals
``alpha A_i / (1 - h_i)`` with ``1 - h_i = alpha [G^-1]_ii - 1/n``. It is used only when
``max eigenvalue / min(alphas)`` is below 1e4 (float32) so that the factorisation stays
accurate; otherwise (and for k-fold and the primal form) the eigendecomposition serves
all alphas.

Targets are processed in batches (``target_batch_size``) so that no
``(n_alphas, n, t)`` array is ever materialised. Several feature blocks
(``fit([X1, X2, ...], Y)``, e.g. the memory windows of the decoding stage) are never
concatenated: the Gram matrix is accumulated block by block and column chunk by column
chunk, each chunk centred on the fly.

Numerics: eigenvalues below ``max(s) * max(n, p) * eps`` are treated as zero (their
directions are dropped; this is what removes the constant direction that centring puts
in the kernel's null space). In float32 mode the Gram matrix carries a relative error of
order 1e-7 * max(s) whichever precision the eigendecomposition uses, so
``eigh_dtype="float32"`` is the default; ``eigh_dtype="float64"`` buys orthogonality of
``U`` at several times the cost on CPU (see ``bench/README.md``). ``dtype="float64"``
runs everything in double precision and matches scikit-learn to ~1e-10.

Alpha selection uses the mean squared error per target, like scikit-learn's
``RidgeCV(alpha_per_target=True)``; ``cv_scores_`` holds the *negative* mean squared
leave-one-out (or held-out) error so that higher is better, and :attr:`RidgeCV.cv_r2_`
turns it into a cross-validated R^2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin

from lib.config import resolve_device

#: The default alpha grid of the project (absolute ridge penalties, as in scikit-learn):
#: 0.1 to 1e7 in half-decade steps. Penalties act against the eigenvalues of the Gram matrix,
#: whose sum is n_samples x n_features for z-scored inputs: from hundreds of images x a few
#: hundred features (toy encoding) to ~10k trials x ~15k voxels (NSD stage 1). 0.1 leaves
#: any such fit practically unregularised; 1e7 shrinks the toy fits to the mean and reaches
#: the regime of NSD's stage-1 optima (1e4-1e6 in published ridge decoders). A fit whose
#: chosen alphas sit at an edge says so (:class:`AlphaGridWarning`).
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 7, 17))


class AlphaGridWarning(UserWarning):
    """Many targets chose the smallest or the largest alpha of the grid."""

_DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: Memory budget (bytes) used to size target batches when ``target_batch_size`` is None.
_BATCH_BUDGET = 512 * 2**20

#: Column chunk (features) used when accumulating Gram matrices from centred blocks.
_FEATURE_CHUNK = 2048


# ----------------------------------------------------------------------------- helpers
def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype)]
    except KeyError:
        raise ValueError(f"dtype={dtype!r} is not supported; use 'float32' or 'float64'.") from None


def _to_tensor(a, device, dtype, name) -> torch.Tensor:
    """Array-like -> 2-D tensor on ``device`` (no copy when already there)."""
    if isinstance(a, torch.Tensor):
        t = a.detach()
    else:
        arr = np.asarray(a)
        if arr.dtype == object:
            raise TypeError(f"{name} must be a numeric array, got an object array.")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features); got shape {tuple(t.shape)}.")
    if not torch.is_floating_point(t) or t.dtype != dtype or t.device != device:
        t = t.to(device=device, dtype=dtype)
    return t


def _as_blocks(X, device, dtype) -> list[torch.Tensor]:
    """Accept one design matrix or a list/tuple of blocks sharing their rows."""
    if isinstance(X, (list, tuple)):
        if len(X) == 0:
            raise ValueError("X is an empty list of feature blocks; pass at least one block.")
        blocks = [_to_tensor(b, device, dtype, f"X[{i}]") for i, b in enumerate(X)]
    else:
        blocks = [_to_tensor(X, device, dtype, "X")]
    n = blocks[0].shape[0]
    for i, b in enumerate(blocks):
        if b.shape[0] != n:
            raise ValueError(
                f"feature block X[{i}] has {b.shape[0]} rows but block 0 has {n}; "
                "all blocks must describe the same samples."
            )
        if not torch.isfinite(b).all():
            raise ValueError(f"feature block X[{i}] contains NaN or infinite values.")
    return blocks


def _block_means(blocks, fit_intercept):
    if not fit_intercept:
        return [torch.zeros(b.shape[1], dtype=b.dtype, device=b.device) for b in blocks]
    return [b.mean(0, dtype=torch.float64).to(b.dtype) for b in blocks]


def _chunks(p: int, size: int = _FEATURE_CHUNK):
    for j in range(0, p, size):
        yield slice(j, min(j + size, p))


def _centered_gram(blocks, means, rows=None, n_row_blocks: int = 4) -> torch.Tensor:
    """``sum_b (X_b - m_b)(X_b - m_b)^T`` accumulated over column chunks (n x n).

    Only the lower block triangle is computed (``q (q + 1) / 2`` of ``q^2`` row-block
    products, a poor man's ``syrk``), then mirrored.
    """
    n = blocks[0].shape[0] if rows is None else len(rows)
    K = torch.zeros(n, n, dtype=blocks[0].dtype, device=blocks[0].device)
    q = n_row_blocks if n >= 512 else 1
    edges = [round(i * n / q) for i in range(q + 1)]
    spans = [slice(edges[i], edges[i + 1]) for i in range(q)]
    for b, m in zip(blocks, means):
        for sl in _chunks(b.shape[1]):
            xc = b[:, sl] if rows is None else b[rows, sl]
            xc = xc - m[sl]
            for i, ri in enumerate(spans):
                for rj in spans[: i + 1]:
                    K[ri, rj].addmm_(xc[ri], xc[rj].T)
    if q > 1:
        for i, ri in enumerate(spans):
            for rj in spans[:i]:
                K[rj, ri] = K[ri, rj].T
    return K


def _centered_cross(blocks, means, A: torch.Tensor) -> torch.Tensor:
    """``Xc^T A`` for the stacked centred blocks: (sum p_b, k)."""
    out = []
    for b, m in zip(blocks, means):
        for sl in _chunks(b.shape[1]):
            out.append((b[:, sl] - m[sl]).T @ A)
    return torch.cat(out, 0)


def _centered_times(blocks, means, B: torch.Tensor) -> torch.Tensor:
    """``Xc @ B`` for the stacked centred blocks and ``B`` of shape (sum p_b, k)."""
    out = None
    j = 0
    for b, m in zip(blocks, means):
        pb = b.shape[1]
        Bb = B[j : j + pb]
        # (X - 1 m^T) B = X B - 1 (m^T B)
        part = b @ Bb - (m @ Bb)[None, :]
        out = part if out is None else out + part
        j += pb
    return out


def _primal_gram(blocks, means) -> torch.Tensor:
    """``Xc^T Xc`` (p x p) assembled block by block (no concatenated copy of X)."""
    sizes = [b.shape[1] for b in blocks]
    p = sum(sizes)
    G = torch.empty(p, p, dtype=blocks[0].dtype, device=blocks[0].device)
    offs = np.concatenate([[0], np.cumsum(sizes)])
    centred = [b - m for b, m in zip(blocks, means)]
    for a in range(len(blocks)):
        for c in range(a, len(blocks)):
            g = centred[a].T @ centred[c]
            G[offs[a] : offs[a + 1], offs[c] : offs[c + 1]] = g
            if c != a:
                G[offs[c] : offs[c + 1], offs[a] : offs[a + 1]] = g.T
    return G


def _eigh(M: torch.Tensor, eigh_dtype: torch.dtype):
    """Symmetric eigendecomposition, eigenvalues clipped: returns (s, Q) with s > tol."""
    work = M if M.dtype == eigh_dtype else M.to(eigh_dtype)
    s, Q = torch.linalg.eigh(work)
    s = s.to(M.dtype)
    Q = Q.to(M.dtype)
    smax = s.abs().max() if s.numel() else torch.tensor(0.0)
    tol = float(smax) * max(M.shape[0], 1) * torch.finfo(eigh_dtype).eps
    keep = s > max(tol, torch.finfo(M.dtype).tiny)
    return s[keep].contiguous(), Q[:, keep].contiguous()


def _largest_eigenvalue(K: torch.Tensor, n_iter: int = 30) -> float:
    """Largest eigenvalue of a symmetric PSD matrix by block power iteration (upper-ish bound)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    V = torch.randn(K.shape[0], 4, generator=g).to(device=K.device, dtype=K.dtype)
    lam = 0.0
    for _ in range(n_iter):
        V, _ = torch.linalg.qr(K @ V)
    lam = float(torch.linalg.eigvalsh(V.T @ K @ V).max())
    return 1.1 * lam


class _Spectrum:
    """Thin spectral representation of a centred design: ``Xc = U diag(sqrt s) V^T``.

    Attributes: ``U`` (n, r), ``s`` (r,), and ``W = Xc^T U = V diag(sqrt s)`` (p, r) when it
    is cheaper to form it once than to go through dual coefficients for every target
    (``coef = W diag(1/(s+a)) C`` costs ``2npr + 2prt``; ``coef = Xc^T (U diag(1/(s+a)) C)``
    costs ``2nrt + 2npt``).
    """

    def __init__(self, U, s, W, blocks=None, means=None):
        self.U, self.s, self.W = U, s, W
        self._blocks, self._means = blocks, means

    def coef(self, C: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Primal coefficients (p, t_batch) for ``C = U^T Yc`` and per-target ``alpha``."""
        D = C / (self.s[:, None] + alpha[None, :])
        if self.W is not None:
            return self.W @ D
        return _centered_cross(self._blocks, self._means, self.U @ D)

    @classmethod
    def from_blocks(cls, blocks, means, dual: bool, eigh_dtype, K=None, times=None, n_targets=None,
                    verbose=False):
        times = {} if times is None else times
        clock = _Clock(blocks[0].device, times, verbose)
        if dual:
            if K is None:
                K = _centered_gram(blocks, means)
            clock("gram")
            s, U = _eigh(K, eigh_dtype)
            del K
            clock("eigh")
            n, p, r = U.shape[0], sum(b.shape[1] for b in blocks), U.shape[1]
            t = n_targets if n_targets is not None else 0
            if n_targets is not None and 2 * n * p * r + 2 * p * r * t < 2 * n * r * t + 2 * n * p * t:
                W = _centered_cross(blocks, means, U)
                clock("project")
            else:
                return cls(U, s, None, blocks, means)
        else:
            G = _primal_gram(blocks, means)
            clock("gram")
            s, V = _eigh(G, eigh_dtype)
            del G
            clock("eigh")
            W = V * s.sqrt()[None, :]
            U = _centered_times(blocks, means, V) / s.sqrt()[None, :]
            clock("project")
        return cls(U, s, W)


class _Clock:
    """Accumulate wall time of named phases (synchronising CUDA before reading)."""

    def __init__(self, device, times: dict, verbose: bool = False):
        import time

        self._time = time.perf_counter
        self.device, self.times, self.verbose = device, times, verbose
        self.t = self._time()

    def __call__(self, name):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = self._time()
        self.times[name] = self.times.get(name, 0.0) + now - self.t
        if self.verbose:
            import sys

            print(f"[lib.ridge] {name}: {now - self.t:.1f} s", file=sys.stderr, flush=True)
        self.t = now


def _targets_tensor(Y) -> torch.Tensor:
    """Targets as a 2-D tensor (zero-copy view of a float NumPy array where possible)."""
    if isinstance(Y, torch.Tensor):
        Yt = Y.detach()
    else:
        arr = np.asarray(Y)
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
        Yt = torch.from_numpy(np.ascontiguousarray(arr))
    if Yt.ndim == 1:
        Yt = Yt[:, None]
    if Yt.ndim != 2:
        raise ValueError(f"Y must be 1-D or 2-D (n_samples, n_targets); got shape {tuple(Yt.shape)}.")
    if not torch.isfinite(Yt).all():
        raise ValueError("Y contains NaN or infinite values.")
    return Yt


def _kfold_splits(cv, n, groups=None):
    """(train, validation) index pairs; folds never split a group when ``groups`` is given."""
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(f"groups has shape {groups.shape}; expected ({n},), one label per "
                             "sample (e.g. the image id of every trial).")
        if isinstance(cv, (int, np.integer)):
            from sklearn.model_selection import GroupKFold

            n_groups = np.unique(groups).size
            if not 2 <= int(cv) <= n_groups:
                raise ValueError(f"cv={cv} folds is invalid for {n_groups} groups; use "
                                 "2 <= cv <= number of groups.")
            cv = GroupKFold(n_splits=int(cv))
        if not hasattr(cv, "split"):
            raise ValueError("groups were given but cv is a list of splits; pass an int or a "
                             "splitter with split(X, y, groups) (e.g. GroupKFold).")
        splits = [(np.asarray(tr), np.asarray(va)) for tr, va in cv.split(np.zeros((n, 1)), None,
                                                                          groups)]
        for tr, va in splits:
            if np.intersect1d(groups[tr], groups[va]).size:
                raise ValueError(f"the splitter {cv!r} puts a group on both sides of a fold; use "
                                 "a group-aware splitter such as GroupKFold.")
        return splits
    if isinstance(cv, (int, np.integer)):
        k = int(cv)
        if not 2 <= k <= n:
            raise ValueError(f"cv={k} folds is invalid for {n} samples; use 2 <= cv <= n_samples.")
        sizes = np.full(k, n // k)
        sizes[: n % k] += 1  # as sklearn.model_selection.KFold (no shuffling)
        edges = np.concatenate([[0], np.cumsum(sizes)])
        idx = np.arange(n)
        return [(np.concatenate([idx[: edges[i]], idx[edges[i + 1] :]]), idx[edges[i] : edges[i + 1]])
                for i in range(k)]
    if hasattr(cv, "split"):
        return list(cv.split(np.zeros((n, 1))))
    return [(np.asarray(tr), np.asarray(va)) for tr, va in cv]


# ----------------------------------------------------------------------------- estimator
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
        ``"loo"``: exact efficient leave-one-out from one eigendecomposition (grouped by
        image when every row is one image, e.g. repetition-averaged betas).
        int ``k``: contiguous k-fold (no shuffling: neighbouring fMRI samples stay together),
        or, when ``fit`` gets ``groups``, scikit-learn's ``GroupKFold(k)`` on them;
        a splitter is called as ``cv.split(X, y, groups)``.
        One eigendecomposition per fold serves every alpha and target.
    fit_intercept : bool, default True
        Centre X and Y with their training means; the intercept is not penalised.
    device : {"auto", "cpu", "cuda", "cuda:N"}, default "auto"
    dtype : {"float32", "float64"}, default "float32"
        Compute precision. ``"float64"`` matches scikit-learn to ~1e-10.
    target_batch_size : int or None
        Targets processed together; None sizes batches to about 512 MiB of work arrays.
    solver : {"auto", "eigen", "cholesky"}, default "auto"
        How leave-one-out is computed in the dual form. ``"eigen"``: one eigendecomposition
        for all alphas (always used for k-fold and the primal form). ``"cholesky"``: one
        Cholesky factorisation and inverse of ``K + alpha I`` per alpha, with
        ``e_i = alpha [G^-1 Yc]_i / (alpha [G^-1]_ii - 1/n)``; on CPU LAPACK's ``eigh`` costs
        as much as ~10-20 such factorisations, so this is faster for short alpha grids,
        but its accuracy degrades with the condition number ``(s_max + alpha) / alpha``.
        ``"auto"`` uses Cholesky when the form is dual, ``cv="loo"``, there are at most 10
        alphas and ``s_max / min(alphas)`` (largest eigenvalue by power iteration) is below
        1e4 in float32 (1e10 in float64); otherwise eigen.
    eigh_dtype : {"float32", "float64"} or None
        Precision of the eigendecomposition; None uses ``dtype``.
    verbose : bool, default False
        Show a progress bar over target batches.
    warn_edge : float or None, default 0.05
        Warn (:class:`AlphaGridWarning`, once per fit) when more than this fraction of the
        targets chose the smallest or the largest alpha of the grid; None never warns.

    Attributes
    ----------
    coef_ : ndarray of shape (n_targets, n_features)
        Coefficients; with feature blocks, the blocks' columns in order
        (``coef_blocks()`` splits them).
    intercept_ : ndarray of shape (n_targets,)
    best_alphas_ : ndarray of shape (n_targets,)
        The chosen alpha of every target (all equal when ``alpha_per_target=False``).
    alpha_ : float or ndarray
        The shared alpha, or ``best_alphas_`` when ``alpha_per_target=True``.
    cv_scores_ : ndarray of shape (n_alphas, n_targets)
        Negative mean squared leave-one-out (or held-out) error: higher is better.
    cv_r2_ : ndarray of shape (n_alphas, n_targets)
        ``1 - MSE / Var(y)`` (cross-validated R^2), derived from ``cv_scores_``.
    cv_r_ : ndarray of shape (n_alphas, n_targets)
        Pearson correlation between the held-out (leave-one-out or out-of-fold) predictions
        and the targets, over all training samples.
    alpha_edge_fraction_ : tuple of float
        Fractions of targets whose chosen alpha is the grid's smallest and its largest.
    n_features_in_ : int
    block_sizes_ : list of int
        Number of features of each block passed to ``fit``.
    fit_info_ : dict
        ``form`` ("dual" or "primal"), ``rank``, ``n_batches``, wall ``time_s``.
    """

    def __init__(
        self,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        alpha_per_target: bool = True,
        cv="loo",
        fit_intercept: bool = True,
        device: str = "auto",
        dtype: str = "float32",
        target_batch_size: int | None = None,
        eigh_dtype: str | None = None,
        solver: str = "auto",
        verbose: bool = False,
        warn_edge: float | None = 0.05,
    ):
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

    # ------------------------------------------------------------------ internals
    def _setup(self):
        dev = resolve_device(self.device)
        dt = _torch_dtype(self.dtype)
        edt = dt if self.eigh_dtype is None else _torch_dtype(self.eigh_dtype)
        alphas = np.asarray(self.alphas, dtype=np.float64).ravel()
        if alphas.size == 0 or np.any(alphas <= 0) or not np.all(np.isfinite(alphas)):
            raise ValueError(f"alphas must be a non-empty sequence of positive numbers; got {self.alphas!r}.")
        return dev, dt, edt, alphas

    def _batches(self, n, p, t, r):
        tb = self.target_batch_size
        if tb is None:
            per_target = 4 * (4 * n + 2 * r + p)  # Y, C, fitted, residual, coef columns
            tb = int(max(64, min(t, _BATCH_BUDGET // max(per_target, 1))))
        tb = max(1, int(tb))
        return [slice(j, min(j + tb, t)) for j in range(0, t, tb)]

    def _progress(self, it, total, desc):
        if not self.verbose:
            return it
        from tqdm.auto import tqdm

        return tqdm(it, total=total, desc=desc)

    def _y_batch(self, Y, sl, dev, dt, y_mean):
        yb = Y[:, sl].to(device=dev, dtype=dt)
        if self.fit_intercept:
            yb = yb - y_mean[sl]
        return yb

    # ------------------------------------------------------------------ fit
    def fit(self, X, Y, groups=None):
        """Fit on training data.

        Parameters
        ----------
        X : ndarray or tensor of shape (n_samples, n_features), or a list of such blocks
            (n_samples, p_1), (n_samples, p_2), ... sharing their rows.
        Y : ndarray or tensor of shape (n_samples, n_targets) or (n_samples,)
        groups : array-like of shape (n_samples,) or None
            Group label of every sample (e.g. the image of every trial): alpha selection
            then never has a group on both sides of a fold. Needs ``cv`` an int or a
            splitter; with ``cv="loo"`` only when every group is one sample.

        Returns
        -------
        self
        """
        import time

        t0 = time.perf_counter()
        dev, dt, edt, alphas = self._setup()
        blocks = _as_blocks(X, dev, dt)
        n = blocks[0].shape[0]
        sizes = [b.shape[1] for b in blocks]
        p = sum(sizes)
        self._y_1d = (np.ndim(Y) == 1)
        Yh = _targets_tensor(Y)
        if Yh.shape[0] != n:
            raise ValueError(f"X has {n} samples but Y has {Yh.shape[0]} rows; they must match.")
        t = Yh.shape[1]
        if n < 2:
            raise ValueError("RidgeCV needs at least 2 training samples.")

        means = _block_means(blocks, self.fit_intercept)
        if self.fit_intercept:
            y_mean = Yh.mean(0, dtype=torch.float64).to(device=dev, dtype=dt)
        else:
            y_mean = torch.zeros(t, dtype=dt, device=dev)
        dual = n <= p
        self._times = {}

        if groups is not None and self.cv in ("loo", None):
            if np.unique(np.asarray(groups)).size != n:
                raise ValueError("cv='loo' leaves out single samples, but groups has samples "
                                 "sharing a group (e.g. repeats of an image); pass cv=k for "
                                 "GroupKFold(k) or average the repeats first.")
            groups = None
        self._groups = groups
        if self.cv == "loo" or self.cv is None:
            out = None
            if dual and self._use_cholesky(blocks, means, alphas, dt):
                out = self._fit_loo_cholesky(blocks, means, Yh, y_mean, alphas, dev, dt)
            if out is None:
                out = self._fit_loo(blocks, means, Yh, y_mean, alphas, dual, dev, dt, edt)
            scores, best, coef, y_var, spec = out
        else:
            scores, best, coef, y_var, spec = self._fit_kfold(blocks, means, Yh, y_mean, alphas, dual, dev, dt, edt)

        np_dt = np.float64 if dt == torch.float64 else np.float32
        self.coef_ = coef
        x_mean = torch.cat(means).cpu().numpy().astype(np.float64)
        self.intercept_ = np.zeros(t, dtype=np_dt)
        if self.fit_intercept:  # y_mean - coef @ x_mean, in float64 by chunks (no float64 copy of coef)
            ym = y_mean.cpu().numpy().astype(np.float64)
            for j in range(0, t, 4096):
                self.intercept_[j : j + 4096] = ym[j : j + 4096] - coef[j : j + 4096].astype(np.float64) @ x_mean
        self.best_alphas_ = alphas[best]
        self.alpha_ = self.best_alphas_ if self.alpha_per_target else float(alphas[best[0]])
        self.alphas_ = alphas
        self.cv_scores_ = scores
        self.cv_r_ = self.__dict__.pop("_cv_r")
        self._y_var = y_var
        self._warn_edges(best, alphas)
        self.n_features_in_ = p
        self.block_sizes_ = sizes
        self.x_mean_ = x_mean.astype(np_dt)
        self.fit_info_ = {
            "form": "dual" if dual else "primal",
            "solver": "cholesky" if spec is None else "eigen",
            "rank": None if spec is None else int(spec.s.numel()),
            "n_samples": n,
            "n_features": p,
            "n_targets": t,
            "n_batches": len(self._batches(n, p, t, n if spec is None else int(spec.s.numel()))),
            "device": str(dev),
            "dtype": str(dt).replace("torch.", ""),
            "time_s": time.perf_counter() - t0,
            "phase_s": dict(self._times),
        }
        del self._times
        self.__dict__.pop("_K", None)
        return self

    def _warn_edges(self, best, alphas):
        na = len(alphas)
        lo = float(np.mean(best == 0)) if na > 1 else 0.0
        hi = float(np.mean(best == na - 1)) if na > 1 else 0.0
        self.alpha_edge_fraction_ = (lo, hi)
        if self.warn_edge is not None and max(lo, hi) > self.warn_edge:
            import warnings

            warnings.warn(
                f"RidgeCV: the chosen alpha is the grid's smallest ({alphas[0]:g}) for {lo:.0%} "
                f"and its largest ({alphas[-1]:g}) for {hi:.0%} of {len(best)} targets. At the "
                "smallest, extend the grid downwards; at the largest, the targets may carry no "
                "predictable signal (their prediction is the mean) or need larger penalties.",
                AlphaGridWarning, stacklevel=3)

    @property
    def cv_r2_(self):
        var = np.where(self._y_var > 0, self._y_var, np.nan)
        return 1.0 + self.cv_scores_ / var[None, :]

    def _coef_batches(self, spec, Y, y_mean, sl_list, alphas_for, dev, dt, coef):
        """coef[sl] = (W diag(1/(s+alpha_t)) U^T Yc)^T for each target batch."""
        for sl in sl_list:
            C = spec.U.T @ self._y_batch(Y, sl, dev, dt, y_mean)
            a = torch.as_tensor(alphas_for[sl], dtype=dt, device=dev)
            coef[sl] = spec.coef(C, a).T.cpu().numpy()

    def _use_cholesky(self, blocks, means, alphas, dt) -> bool:
        if self.solver not in ("auto", "eigen", "cholesky"):
            raise ValueError(f"solver={self.solver!r} is not one of 'auto', 'eigen', 'cholesky'.")
        if self.solver == "eigen":
            return False
        if self.solver == "cholesky":
            return True
        if len(alphas) > 10:
            return False
        clock = _Clock(blocks[0].device, self._times, self.verbose)
        self._K = _centered_gram(blocks, means)
        smax = _largest_eigenvalue(self._K)
        clock("gram")
        limit = 1e4 if dt == torch.float32 else 1e10
        return smax / float(alphas.min()) < limit

    def _fit_loo_cholesky(self, blocks, means, Y, y_mean, alphas, dev, dt):
        """Exact LOO with one Cholesky factorisation per alpha (dual form).

        With ``G = Kc + alpha I``: dual coefficients ``A = G^-1 Yc``, residuals
        ``Yc - Kc A = alpha A`` and ``1 - h_i = alpha [G^-1]_ii - 1/n`` (intercept). To avoid
        cancellation in that difference, ``c 1 1^T`` (``n c`` = mean eigenvalue) is added to
        ``G``: this leaves ``G^-1`` unchanged on centred vectors and gives
        ``1 - h_i = alpha ([G^-1]_ii - 1 / (n (alpha + n c)))`` without cancellation. Returns None when a factorisation fails (caller falls back).
        """
        times = self._times
        clock = _Clock(dev, times, self.verbose)
        K = getattr(self, "_K", None)
        self._K = None
        if K is None:
            K = _centered_gram(blocks, means)
        clock("gram")
        n, t, na = K.shape[0], Y.shape[1], len(alphas)
        p = sum(b.shape[1] for b in blocks)
        if self.fit_intercept:
            nc = float(K.diagonal().sum()) / n
            K = K + nc / n
            h1 = lambda a: 1.0 / (n * (a + nc))
        else:
            h1 = lambda a: 0.0
        np_dt = np.float64 if dt == torch.float64 else np.float32
        scores = np.empty((na, t), dtype=np.float64)
        best = np.zeros(t, dtype=np.int64)
        y_var = np.empty(t, dtype=np.float64)
        A_best = torch.empty(n, t, dtype=dt, device=dev)
        acc = _HeldOutPearson(na, t)
        sl_list = self._batches(n, p, t, n)
        for k, a in enumerate(self._progress(alphas, na, "ridge LOO (Cholesky)")):
            G = K.clone()
            G.diagonal().add_(a)
            L, info = torch.linalg.cholesky_ex(G)
            del G
            if int(info) != 0:
                return None
            Ginv = torch.cholesky_inverse(L)
            del L
            one_minus_h = (a * (Ginv.diagonal() - h1(a))).clamp_min(torch.finfo(dt).tiny)
            w = (a / one_minus_h)[:, None]
            clock("factor")
            for sl in sl_list:
                Yc = self._y_batch(Y, sl, dev, dt, y_mean)
                if k == 0:
                    y_var[sl] = (Yc.double() ** 2).mean(0).cpu().numpy()
                A = Ginv @ Yc
                E = A * w
                sc = (-(E.double() ** 2).mean(0)) if dt == torch.float64 else -(E * E).mean(0).double()
                scores[k, sl] = sc.cpu().numpy()
                acc.add(k, sl, Yc, E, targets=k == 0)
                if k == 0:
                    A_best[:, sl] = A
                else:
                    better = torch.from_numpy(scores[k, sl] > scores[best[sl], np.arange(sl.start, sl.stop)])
                    better_np = better.numpy()
                    best[sl] = np.where(better_np, k, best[sl])
                    A_best[:, sl] = torch.where(better.to(dev)[None, :], A, A_best[:, sl])
                del A, E, Yc
            del Ginv
            clock("loo")
        if not self.alpha_per_target:  # shared alpha: dual coefficients of that alpha
            k = int(np.argmax(scores.mean(1)))
            best[:] = k
            G = K.clone()
            G.diagonal().add_(alphas[k])
            L = torch.linalg.cholesky(G)
            del G
            for sl in sl_list:
                A_best[:, sl] = torch.cholesky_solve(self._y_batch(Y, sl, dev, dt, y_mean), L)
            del L
        del K
        coef = np.empty((t, p), dtype=np_dt)
        for sl in sl_list:
            coef[sl] = _centered_cross(blocks, means, A_best[:, sl]).T.cpu().numpy()
        clock("coef")
        self._cv_r = acc.r()
        return scores, best, coef, y_var, None

    def _fit_loo(self, blocks, means, Y, y_mean, alphas, dual, dev, dt, edt):
        n = blocks[0].shape[0]
        p = sum(b.shape[1] for b in blocks)
        t = Y.shape[1]
        times = self._times
        K, self._K = getattr(self, "_K", None), None
        spec = _Spectrum.from_blocks(blocks, means, dual, edt, K=K, times=times, n_targets=t, verbose=self.verbose)
        del K
        clock = _Clock(dev, times)
        U, s = spec.U, spec.s
        U2 = U * U
        h0 = 1.0 / n if self.fit_intercept else 0.0
        na = len(alphas)
        a_t = torch.as_tensor(alphas, dtype=dt, device=dev)
        F = s[:, None] / (s[:, None] + a_t[None, :])  # (r, n_alphas) shrinkage factors
        H = h0 + U2 @ F  # (n, n_alphas) hat-matrix diagonals
        # guard 1 - h against exact interpolation (h -> 1 for tiny alpha, n <= p)
        one_minus_h = (1.0 - H).clamp_min(torch.finfo(dt).eps)
        inv_1mh = 1.0 / one_minus_h
        del U2, H

        np_dt = np.float64 if dt == torch.float64 else np.float32
        scores = np.empty((na, t), dtype=np.float64)
        y_var = np.empty(t, dtype=np.float64)
        coef = np.empty((t, p), dtype=np_dt)
        best = np.empty(t, dtype=np.int64)
        sl_list = self._batches(n, p, t, int(s.numel()))
        acc = _HeldOutPearson(na, t)
        for sl in self._progress(sl_list, len(sl_list), "ridge LOO"):
            Yc = self._y_batch(Y, sl, dev, dt, y_mean)
            y_var[sl] = (Yc.double() ** 2).mean(0).cpu().numpy()
            C = U.T @ Yc
            clock("targets")
            sc = torch.empty(na, Yc.shape[1], dtype=torch.float64, device=dev)
            for k in range(na):
                R = torch.addmm(Yc, U, F[:, k : k + 1] * C, alpha=-1.0)  # Yc - U diag(f) C
                R.mul_(inv_1mh[:, k : k + 1])
                sc[k] = -(R.double() ** 2).mean(0) if dt == torch.float64 else -(R * R).mean(0).double()
                acc.add(k, sl, Yc, R, targets=k == 0)
                del R
            scores[:, sl] = sc.cpu().numpy()
            clock("loo")
            if self.alpha_per_target:
                idx = torch.argmax(sc, 0)
                best[sl] = idx.cpu().numpy()
                a_b = a_t[idx]
                coef[sl] = spec.coef(C, a_b).T.cpu().numpy()
                clock("coef")
            del C, Yc
        if not self.alpha_per_target:
            k = int(np.argmax(scores.mean(1)))
            best[:] = k
            self._coef_batches(spec, Y, y_mean, sl_list, alphas[best], dev, dt, coef)
            clock("coef")
        self._cv_r = acc.r()
        return scores, best, coef, y_var, spec

    def _fit_kfold(self, blocks, means, Y, y_mean, alphas, dual, dev, dt, edt):
        n = blocks[0].shape[0]
        p = sum(b.shape[1] for b in blocks)
        t = Y.shape[1]
        na = len(alphas)
        a_t = torch.as_tensor(alphas, dtype=dt, device=dev)
        splits = _kfold_splits(self.cv, n, self._groups)
        np_dt = np.float64 if dt == torch.float64 else np.float32
        sse = np.zeros((na, t), dtype=np.float64)
        count = np.zeros(t, dtype=np.float64)
        acc = _HeldOutPearson(na, t)
        K = _centered_gram(blocks, means) if dual else None  # shift-invariant per fold
        for tr, va in self._progress(splits, len(splits), "ridge k-fold"):
            tr_t = torch.as_tensor(tr, device=dev)
            va_t = torch.as_tensor(va, device=dev)
            if dual:
                Ktr = K[tr_t][:, tr_t]
                Kva = K[va_t][:, tr_t]
                if self.fit_intercept:
                    m_tr = Ktr.mean(1)
                    c = m_tr.mean()
                    Kva = Kva - Kva.mean(1, keepdim=True) - m_tr[None, :] + c
                    Ktr = Ktr - m_tr[:, None] - m_tr[None, :] + c
                s, U = _eigh(Ktr, edt)
                P = Kva @ U  # = Xva_c V diag(sqrt s)
            else:
                btr = [b[tr_t] for b in blocks]
                mtr = _block_means(btr, self.fit_intercept)
                sp = _Spectrum.from_blocks(btr, mtr, False, edt)
                U, s = sp.U, sp.s
                P = _centered_times([b[va_t] for b in blocks], mtr, sp.W)
            for sl in _kfold_target_batches(self, len(tr), p, t, int(s.numel())):
                ycols = Y[:, sl]
                ytr = ycols[torch.as_tensor(tr)].to(dev, dt)
                yva = ycols[torch.as_tensor(va)].to(dev, dt)
                if self.fit_intercept:
                    mu = ytr.double().mean(0).to(dt)
                    ytr = ytr - mu
                    yva = yva - mu
                C = U.T @ ytr
                # targets relative to the overall training mean, common to all folds
                y_ref = yva + (mu - y_mean[sl]) if self.fit_intercept else yva
                for k in range(na):
                    E = torch.addmm(yva, P, C / (s[:, None] + a_t[k]), alpha=-1.0)
                    sse[k, sl] += (E.double() ** 2).sum(0).cpu().numpy()
                    acc.add(k, sl, y_ref, E, targets=k == 0)
            count += len(va)
        scores = -sse / count[None, :]
        self._cv_r = acc.r()
        if self.alpha_per_target:
            best = np.argmax(scores, 0)
        else:
            best = np.full(t, int(np.argmax(scores.mean(1))))
        spec = _Spectrum.from_blocks(blocks, means, dual, edt, K=K, times=self._times, n_targets=t,
                                     verbose=self.verbose)
        del K
        coef = np.empty((t, p), dtype=np_dt)
        y_var = np.empty(t, dtype=np.float64)
        sl_list = self._batches(n, p, t, int(spec.s.numel()))
        for sl in sl_list:
            y_var[sl] = (self._y_batch(Y, sl, dev, dt, y_mean).double() ** 2).mean(0).cpu().numpy()
        self._coef_batches(spec, Y, y_mean, sl_list, alphas[best], dev, dt, coef)
        return scores, best, coef, y_var, spec

    # ------------------------------------------------------------------ predict / score
    def _check_fitted(self):
        if not hasattr(self, "coef_"):
            raise RuntimeError("This RidgeCV is not fitted yet; call fit(X, Y) first.")

    def coef_blocks(self) -> list[np.ndarray]:
        """Split ``coef_`` into one (n_targets, p_b) array per feature block given to fit."""
        self._check_fitted()
        offs = np.concatenate([[0], np.cumsum(self.block_sizes_)])
        return [self.coef_[:, offs[i] : offs[i + 1]] for i in range(len(self.block_sizes_))]

    def predict(self, X):
        """Predict targets.

        Parameters
        ----------
        X : ndarray or tensor of shape (n_samples, n_features), or the list of blocks
            with the same block sizes as in ``fit``.

        Returns
        -------
        Y_pred : ndarray of shape (n_samples, n_targets) (or (n_samples,) if fit on 1-D y)
        """
        self._check_fitted()
        dev = resolve_device(self.device)
        dt = _torch_dtype(self.dtype)
        blocks = _as_blocks(X, dev, dt)
        sizes = [b.shape[1] for b in blocks]
        if len(sizes) == 1 and sum(sizes) == self.n_features_in_ and len(self.block_sizes_) > 1:
            blocks = list(torch.split(blocks[0], self.block_sizes_, dim=1))
            sizes = list(self.block_sizes_)
        if sizes != list(self.block_sizes_):
            raise ValueError(
                f"X has feature blocks of sizes {sizes} but the model was fit on {list(self.block_sizes_)}."
            )
        out = None
        for b, cb in zip(blocks, self.coef_blocks()):
            part = b @ torch.from_numpy(np.ascontiguousarray(cb)).to(dev, dt).T
            out = part if out is None else out + part
        out = out + torch.from_numpy(self.intercept_).to(dev, dt)[None, :]
        res = out.cpu().numpy()
        return res[:, 0] if getattr(self, "_y_1d", False) else res

    def score(self, X, Y):
        """Mean (over targets) Pearson correlation between predictions and ``Y``."""
        from lib.scoring import pearson_r

        pred = self.predict(X)
        Y = np.asarray(Y)
        return float(np.nanmean(pearson_r(Y.reshape(len(Y), -1), pred.reshape(len(pred), -1))))


class _HeldOutPearson:
    """Pearson r of held-out predictions ``y - e`` with ``y``, from running sums per alpha.

    With ``P = y - e``: ``sum P = Sy - Se``, ``sum P^2 = Syy - 2 Sey + See`` and
    ``sum P y = Syy - Sey``; only ``Se``, ``See`` and ``Sey`` depend on alpha.
    """

    def __init__(self, n_alphas: int, n_targets: int):
        self.n, self.sy, self.syy = (np.zeros(n_targets) for _ in range(3))
        self.se, self.see, self.sey = (np.zeros((n_alphas, n_targets)) for _ in range(3))

    def add(self, k, sl, y, e, targets: bool):
        """Add rows: ``y`` targets and ``e`` held-out residuals (rows, batch) of alpha ``k``."""
        def total(a):  # column sums in the compute dtype (targets are centred: no cancellation)
            return a.sum(0).double().cpu().numpy()

        if targets:
            self.n[sl] += y.shape[0]
            self.sy[sl] += total(y)
            self.syy[sl] += total(y * y)
        self.se[k, sl] += total(e)
        self.see[k, sl] += total(e * e)
        self.sey[k, sl] += total(e * y)

    def r(self) -> np.ndarray:
        n = self.n[None, :]
        sp = self.sy - self.se
        spp = self.syy - 2 * self.sey + self.see
        spy = self.syy - self.sey
        cov = spy / n - sp * self.sy / n**2
        var_p = spp / n - (sp / n) ** 2
        var_y = self.syy / n - (self.sy / n) ** 2
        den = np.sqrt(np.clip(var_p, 0, None) * np.clip(var_y, 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, cov / den, np.nan)


def _kfold_target_batches(est, n, p, t, r):
    return est._batches(n, p, t, r)
