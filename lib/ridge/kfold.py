"""k-fold (or any given splits) cross-validation of ridge penalties, with the same result type
as the leave-one-out solvers (:mod:`lib.ridge.solvers`).

- :func:`kfold_eigen`: folds that partition the samples (k-fold, grouped k-fold), every fold's
  held-out residuals from the one eigendecomposition of all samples (exact).
- :func:`kfold_per_fold`: any splits, one eigendecomposition per fold.
- :func:`kfold`: the first where it applies, else the second.
"""

from __future__ import annotations

import time

import numpy as np

from lib.ridge.design import Clock, Design, Targets, batches, eigh_clipped, spectrum
from lib.ridge.machine import one_thread
from lib.ridge.solvers import (
    CVResult,
    HeldOut,
    Options,
    choose_alphas,
    coef_from_spectrum,
    host_dtype,
    sweep_spectrum,
)


def partitions(splits, n: int) -> bool:
    """Whether the validation sets of ``splits`` partition ``range(n)`` and each training set
    is the complement of its validation set (k-fold, grouped k-fold, leave-one-group-out)."""
    seen = np.zeros(n, dtype=bool)
    for tr, va in splits:
        tr, va = np.asarray(tr), np.asarray(va)
        if len(tr) + len(va) != n or seen[va].any() or np.unique(va).size != len(va):
            return False
        seen[va] = True
        rest = np.ones(n, dtype=bool)
        rest[va] = False
        if not rest[tr].all() or np.unique(tr).size != len(tr):
            return False
    return bool(seen.all())


#: Largest memory (bytes) that :func:`kfold` lets :func:`kfold_eigen` keep in held-out
#: inverses (``n_alphas x sum |v|^2`` values); above it, one eigendecomposition per fold.
#: With 17 alphas and 5 folds: up to about 12,500 samples in float32. NSD's stage 1 at memory
#: 1 (9,000 images: 1.1 GB) and the toy book go through kfold_eigen; NSD with a memory window
#: (each of 24,980 trials a sample: 8.5 GB) keeps one eigendecomposition per fold.
INVERSES_BUDGET = 2 * 2**30


def inverses_bytes(folds, n_alphas: int, itemsize: int) -> int:
    """Memory of :func:`kfold_eigen`'s held-out inverses: ``n_alphas`` of ``|v| x |v|`` per
    fold."""
    return n_alphas * sum(len(va) ** 2 for va in folds) * itemsize


def kfold(design: Design, targets: Targets, alphas, splits, options: Options | None = None
          ) -> CVResult:
    """Held-out errors over given splits: :func:`kfold_eigen` when the validation sets
    partition the samples and its inverses fit :data:`INVERSES_BUDGET`, else
    :func:`kfold_per_fold` (arguments as there; both exact)."""
    folds = [va for _, va in splits]
    itemsize = np.dtype(host_dtype(design.bk, targets.dtype)).itemsize
    if (partitions(splits, design.n)
            and inverses_bytes(folds, len(alphas), itemsize) <= INVERSES_BUDGET):
        return kfold_eigen(design, targets, alphas, folds, options)
    return kfold_per_fold(design, targets, alphas, splits, options)


def _spd_inverse(M: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite float64 matrix (LAPACK ``potrf``/``potri``;
    ``pinvh`` when rounding left it semi-definite)."""
    from scipy.linalg import lapack, pinvh

    L, info = lapack.dpotrf(M, lower=1)
    if info != 0:
        return pinvh(M)
    inv, info = lapack.dpotri(L, lower=1)
    if info != 0:
        return pinvh(M)
    return np.tril(inv) + np.tril(inv, -1).T


def _fold_inverses(U, s, alphas, folds, bk, q_blocks) -> list[list]:
    """``[(I - H)_vv]^-1`` of every alpha (outer list) and fold (inner), compute dtype.

    ``(I - H)_vv = B B^T + Q_vv`` with ``B = U_v diag(sqrt(alpha/(s+alpha)))`` (one symmetric
    product), inverted on the host in float64. Small matrices: on one thread.
    """
    s64 = bk.to_numpy(s).astype(np.float64)
    out = [[None] * len(folds) for _ in alphas]
    with one_thread(bk.name):
        for f, va in enumerate(folds):
            Uv = U[bk.index(va)]
            for k, a in enumerate(alphas):
                B = Uv * bk.asarray(np.sqrt(float(a) / (s64 + float(a))), U.dtype)[None, :]
                M = bk.to_numpy(B @ B.T).astype(np.float64)
                if q_blocks is not None:
                    M += q_blocks[f]
                out[k][f] = bk.asarray(_spd_inverse(M), U.dtype)
    return out


def kfold_eigen(design: Design, targets: Targets, alphas, folds, options: Options | None = None
                ) -> CVResult:
    """Exact held-out errors of folds that partition the samples, from one eigendecomposition.

    Leaving fold ``v`` out of a penalised least-squares fit changes its residuals on ``v`` in
    a closed form: with ``H`` the hat matrix of the fit on all samples (intercept included),
    the residuals of ``v`` under the fit on the other samples are
    ``E_v = [(I - H)_vv]^-1 [(I - H) Yc]_v`` (leave-one-out is the case of one sample per
    fold). With the spectrum ``Xc = U diag(sqrt s) V^T`` and ``C = U^T Yc`` (as in
    :func:`lib.ridge.solvers.loo_eigen`): ``(I - H) Yc = alpha A + Y_perp`` with
    ``A = U diag(1/(s+alpha)) C``, and ``(I - H)_vv = U_v diag(alpha/(s+alpha)) U_v^T + Q_vv``,
    ``Q = I - 11^T/n - U U^T`` (zero when ``U`` spans the centred samples: the dual form).
    The fold's training mean is the intercept of the fit on the other samples, so this is
    what :func:`kfold_per_fold` computes with one eigendecomposition per fold, to rounding.
    Cost: the full fit's ``eigh`` (needed for the refit anyway) and, per alpha, one
    ``n x r`` by ``r x t`` product and a ``|v| x |v|`` inversion and product per fold; the
    inverses of every alpha and fold are kept (17 alphas, 5 folds: ``17 n^2 / 5`` floats,
    1.1 GB at NSD's 9,000 training images; :func:`kfold` goes another way above
    :data:`INVERSES_BUDGET`). A stage-1 fit of the toy book (3,105 trials,
    7,785 voxels, 1,024 targets, 17 alphas, 5 folds grouped by image) took 9.5 s instead of
    16.1 s on one thread of the 2-core Xeon, and 7.8 s instead of 9.0 s on two; in float32
    the scores agreed to 1e-5 relative and every target chose the same alpha
    (``tests/test_ridge.py`` checks equality in float64).

    Parameters
    ----------
    design, targets, alphas, options
        As :func:`lib.ridge.solvers.loo_eigen`.
    folds : list of ndarray
        Validation indices of every fold; together a partition of ``range(n)``.

    Returns
    -------
    result : CVResult
        ``coef`` refitted on all samples with the chosen alphas.
    """
    opt = options or Options()
    bk, n = design.bk, design.n
    spec = spectrum(design, None if opt.alpha_per_target else targets.t, None, opt.eigh_dtype,
                    Clock(bk, opt.times, opt.verbose))
    clock = Clock(bk, opt.times, opt.verbose)
    U, s = spec.U, spec.s
    q_blocks = None
    if not spec.spans:
        h0 = 1.0 / n if design.fit_intercept else 0.0
        q_blocks = []
        for va in folds:
            Uv = bk.to_numpy(U[bk.index(va)]).astype(np.float64)
            q_blocks.append(np.eye(len(va)) - h0 - Uv @ Uv.T)
    inverses = _fold_inverses(U, s, alphas, folds, bk, q_blocks)
    idx = [bk.index(va) for va in folds]
    clock("folds")

    def held_out(acc, k, sl, Yc, A, Y_perp):
        R = A * float(alphas[k]) if Y_perp is None else A * float(alphas[k]) + Y_perp
        for f, ix in enumerate(idx):
            acc.add(bk, k, sl, Yc[ix], inverses[k][f] @ R[ix], first=k == 0)

    return sweep_spectrum(spec, targets, alphas, opt, held_out, "ridge k-fold")


def _fold_operators(design: Design, K, tr, va, eigh_dtype):
    """``(U, s, P)`` of one fold: training spectrum and validation projections ``P``."""
    bk = design.bk
    if K is not None:  # dual: the fold's Gram matrices, re-centred on the training rows
        itr, iva = bk.index(tr), bk.index(va)
        Ktr, Kva = K[itr][:, itr], K[iva][:, itr]
        if design.fit_intercept:
            m_tr = Ktr.mean(1)
            c = m_tr.mean()
            Kva = Kva - Kva.mean(1)[:, None] - m_tr[None, :] + c
            Ktr = Ktr - m_tr[:, None] - m_tr[None, :] + c
        s, U = eigh_clipped(Ktr, bk, eigh_dtype)
        return U, s, Kva @ U  # Kva U = Xva_c V diag(sqrt s)
    dtr = design.rows(tr)
    sp = spectrum(dtr, eigh_dtype=eigh_dtype, dual=False)
    return sp.U, sp.s, design.rows(va, means=dtr.means).times(sp.W)


def kfold_per_fold(design: Design, targets: Targets, alphas, splits,
                   options: Options | None = None) -> CVResult:
    """Held-out errors over any given splits, one eigendecomposition per fold.

    Parameters
    ----------
    design, targets, alphas, options
        As :func:`lib.ridge.solvers.loo_eigen`.
    splits : list of (train, validation) index arrays
        From :func:`lib.ridge.splits.cv_splits`.

    Returns
    -------
    result : CVResult
        ``coef`` refitted on all samples with the chosen alphas.
    """
    opt = options or Options()
    bk, n, t, na = design.bk, design.n, targets.t, len(alphas)
    a_t = bk.asarray(np.asarray(alphas), targets.dtype)
    acc = HeldOut(na, t)
    dual = n <= design.p
    clock = Clock(bk, opt.times, opt.verbose)
    K = design.gram() if dual else None  # shift-invariant: re-centred per fold
    clock("gram")
    for tr, va in opt.progress(splits, len(splits), "ridge k-fold"):
        U, s, P = _fold_operators(design, K, tr, va, opt.eigh_dtype)
        for sl in batches(len(tr), design.p, t, int(s.shape[0]), opt.batch_size):
            ytr = bk.asarray(targets.Y[tr, sl], targets.dtype)
            yva = bk.asarray(targets.Y[va, sl], targets.dtype)
            y_ref = yva - targets.mean[sl]  # relative to the overall mean, as in every fold
            if design.fit_intercept:
                mu = bk.mean64(ytr, 0)
                ytr, yva = ytr - mu, yva - mu
            C = U.T @ ytr
            for k in range(na):
                E = yva - P @ (C / (s[:, None] + a_t[k]))
                acc.add(bk, k, sl, y_ref, E, first=k == 0)
    clock("folds")
    scores = acc.scores()
    best = choose_alphas(scores, opt.alpha_per_target)
    spec = spectrum(design, t, K, opt.eigh_dtype, Clock(bk, opt.times, opt.verbose))
    del K
    clock.t = time.perf_counter()
    slices = batches(n, design.p, t, int(spec.s.shape[0]), opt.batch_size)
    coef = coef_from_spectrum(spec, targets, np.asarray(alphas)[best], slices)
    clock("coef")
    return CVResult(scores, best, coef, acc.y_var(), acc.r(), "eigen", int(spec.s.shape[0]))
