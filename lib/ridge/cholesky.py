"""Exact leave-one-out of ridge penalties with one Cholesky factorisation per alpha (dual
form): BLAS-3 only, so faster than an eigendecomposition on CPUs for short alpha grids, but
accurate only while ``s_max / alpha`` is moderate (:func:`cholesky_is_accurate`). Same
result type as :func:`lib.ridge.solvers.loo_eigen`.

With ``G = Kc + alpha I``: ``A = G^-1 Yc``, LOO residuals ``e_i = alpha A_i / (1 - h_i)``
with ``1 - h_i = alpha [G^-1]_ii - 1/n``.
"""

from __future__ import annotations

import numpy as np

from lib.ridge.design import Clock, Design, Targets, batches, finfo, largest_eigenvalue
from lib.ridge.solvers import (
    CVResult,
    HeldOut,
    Options,
    choose_alphas,
    host_dtype,
    track_best,
)


def cholesky_is_accurate(K, alphas, bk) -> bool:
    """Whether one Cholesky factorisation per alpha is accurate for this Gram matrix.

    True when ``s_max / min(alphas)`` (largest eigenvalue of ``K`` by power iteration) is
    below 1e4 in float32 (1e10 in float64).
    """
    limit = 1e4 if K.dtype == bk.float32 else 1e10
    return largest_eigenvalue(K, bk) / float(np.min(alphas)) < limit


def inv_diag(L, bk, block: int = 512):
    """Diagonal of ``G^-1`` for ``G = L L^T``: column sums of squares of ``L^-1``.

    ``L^-1`` is lower triangular, so its columns ``j:j+block`` solve only the trailing system
    ``L[j:, j:] X = I[j:, j:j+block]``: ``n^3 / 3`` flops in large BLAS-3 triangular solves
    (LAPACK's ``trtri`` does the same work several times slower in OpenBLAS).

    Parameters
    ----------
    L : backend array of shape (n, n), lower triangular
    bk : backend
    block : int

    Returns
    -------
    d : backend array of shape (n,)
    """
    n = L.shape[0]
    parts = []
    for j in range(0, n, block):
        k = min(block, n - j)
        X = bk.solve_lower(L[j:, j:], bk.eye_block(n - j, k, L.dtype))
        parts.append(bk.coldot(X, X))
    if len(parts) == 1:
        return parts[0]
    d = bk.empty(n, L.dtype)
    for j, part in zip(range(0, n, block), parts):
        d[j : j + len(part)] = part
    return d


def _factor(K, alpha: float, bk, h1: float):
    """Cholesky factor of ``K + alpha I`` and LOO weights ``alpha / (1 - h)`` (n, 1)."""
    G = bk.add_diag(bk.copy(K), alpha)
    L = bk.cholesky(G, overwrite=True)
    if L is None:
        return None, None
    one_minus_h = bk.maximum(alpha * (inv_diag(L, bk) - h1), float(finfo(K.dtype).tiny))
    return L, (alpha / one_minus_h)[:, None]


def loo_cholesky(design: Design, targets: Targets, alphas, options: Options | None = None,
                 K=None) -> CVResult | None:
    """Exact leave-one-out with one Cholesky factorisation per alpha (dual form).

    ``c 1 1^T`` (``n c`` the mean eigenvalue) is added to ``Kc``: this leaves ``G^-1``
    unchanged on centred vectors and gives ``1 - h_i = alpha ([G^-1]_ii - 1/(n (alpha + n c)))``
    without cancellation.

    Parameters
    ----------
    design, targets, alphas, options
        As :func:`loo_eigen`.
    K : backend array of shape (n, n) or None
        The dual Gram matrix if already computed (left unchanged).

    Returns
    -------
    result : CVResult, or None when a factorisation fails (use :func:`loo_eigen`)
    """
    opt = options or Options()
    bk, n, t, na = design.bk, design.n, targets.t, len(alphas)
    clock = Clock(bk, opt.times, opt.verbose)
    K = design.gram() if K is None else K
    clock("gram")
    nc = float(bk.to_numpy(K.diagonal().sum())) / n if design.fit_intercept else 0.0
    Kb = K + nc / n if design.fit_intercept else K

    def h1(a):
        return 1.0 / (n * (a + nc)) if design.fit_intercept else 0.0

    acc = HeldOut(na, t)
    best = np.zeros(t, dtype=np.int64)
    A_best = bk.empty((n, t), targets.dtype)
    slices = batches(n, design.p, t, n, opt.batch_size)
    single = targets.batch(slices[0]) if len(slices) == 1 else None  # kept across alphas
    for k, a in enumerate(opt.progress(alphas, na, "ridge LOO (Cholesky)")):
        L, w = _factor(Kb, float(a), bk, h1(float(a)))
        if L is None:
            return None
        clock("factor")
        for sl in slices:
            Yc = single if single is not None else targets.batch(sl)
            A = bk.cho_solve(L, Yc)
            acc.add(bk, k, sl, Yc, A * w, first=k == 0)
            track_best(acc, k, sl, best, A_best[:, sl], A, bk)  # keep the best
            del A, Yc
        clock("loo")
    if not opt.alpha_per_target:
        best = choose_alphas(acc.scores(), False)
        L, _ = _factor(Kb, float(alphas[best[0]]), bk, 0.0)
        for sl in slices:
            A_best[:, sl] = bk.cho_solve(L, targets.batch(sl))
    coef = np.empty((t, design.p), dtype=host_dtype(bk, targets.dtype))
    for sl in slices:
        coef[sl] = bk.to_numpy(design.cross(A_best[:, sl]).T)
    clock("coef")
    return CVResult(acc.scores(), best, coef, acc.y_var(), acc.r(), "cholesky", None)
