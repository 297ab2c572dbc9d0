"""k-fold (or any given splits) cross-validation of ridge penalties, one eigendecomposition
per fold, with the same result type as the leave-one-out solvers (:mod:`lib.ridge.solvers`)."""

from __future__ import annotations

import time

import numpy as np

from lib.ridge.design import Clock, Design, Targets, batches, eigh_clipped, spectrum
from lib.ridge.solvers import CVResult, HeldOut, Options, choose_alphas, coef_from_spectrum


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


def kfold(design: Design, targets: Targets, alphas, splits, options: Options | None = None
          ) -> CVResult:
    """Held-out errors over given splits, one eigendecomposition per fold.

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
