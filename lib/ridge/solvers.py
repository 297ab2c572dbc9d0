"""Ridge solvers with alpha selection: plain functions returning what they compute.

Every solver takes a centred :class:`~lib.ridge.design.Design` (``n`` samples, ``p``
features), :class:`~lib.ridge.design.Targets` (``t`` columns) and a grid of ``n_alphas``
penalties, and returns a :class:`CVResult`: cross-validated errors of every alpha and
target, the chosen alpha of every target and the coefficients refitted on all samples.

- :func:`loo_eigen`: exact leave-one-out for every alpha from one eigendecomposition.
  With ``Xc = U diag(sqrt s) V^T`` and ``C = U^T Yc``: fitted values
  ``U diag(s/(s+alpha)) C``, hat diagonal ``h_i = 1/n + sum_j U_ij^2 s_j/(s_j+alpha)``
  (``1/n``: the unpenalised intercept), LOO residuals ``e_i = (y_i - yhat_i)/(1 - h_i)``.
- :func:`lib.ridge.cholesky.loo_cholesky` (its own module): the same residuals from one
  Cholesky factorisation of ``G = Kc + alpha I`` per alpha (dual form).
- :func:`lib.ridge.kfold.kfold` (its own module): k-fold or any given splits.

Alpha selection minimises the mean squared error per target (as scikit-learn's
``RidgeCV(alpha_per_target=True)``); ``scores`` hold its negative (higher is better).
Targets are processed in batches so that no ``(n_alphas, n, t)`` array is materialised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lib.ridge.design import (
    Clock,
    Design,
    Targets,
    batches,
    finfo,
    spectrum,
)


@dataclass
class Options:
    """Settings shared by the solvers.

    Attributes
    ----------
    alpha_per_target : bool
        One alpha per target (True) or the alpha with the best mean score for all.
    batch_size : int or None
        Targets per batch (None: about 512 MiB of work arrays).
    eigh_dtype : backend dtype or None
        Precision of eigendecompositions (None: the compute dtype).
    verbose : bool
        Progress bars and phase times on stderr.
    times : dict
        Wall time of each phase (seconds), filled by the solver.
    """

    alpha_per_target: bool = True
    batch_size: int | None = None
    eigh_dtype: object = None
    verbose: bool = False
    times: dict = field(default_factory=dict)

    def progress(self, it, total: int, desc: str):
        if not self.verbose:
            return it
        from tqdm.auto import tqdm

        return tqdm(it, total=total, desc=desc)


@dataclass
class CVResult:
    """What a solver computes.

    Attributes
    ----------
    scores : ndarray of shape (n_alphas, t)
        Negative mean squared held-out error (higher is better).
    best : ndarray of shape (t,)
        Index of the chosen alpha of every target.
    coef : ndarray of shape (t, p)
        Coefficients refitted on all samples with the chosen alphas.
    y_var : ndarray of shape (t,)
        Mean squared centred target over the held-out samples (for ``1 + scores / y_var``).
    cv_r : ndarray of shape (n_alphas, t)
        Pearson r of the held-out predictions with the targets.
    solver : str
    rank : int or None
        Retained rank of the spectrum (None for Cholesky).
    """

    scores: np.ndarray
    best: np.ndarray
    coef: np.ndarray
    y_var: np.ndarray
    cv_r: np.ndarray
    solver: str
    rank: int | None = None


class HeldOut:
    """Running sums of held-out residuals ``e`` and predictions ``p = y - e``, per alpha and
    target, against targets ``y``.

    Gives the mean squared error (from ``sum e^2``) and the Pearson r of the predictions (from
    ``sum p``, ``sum p^2`` and ``sum p y``). The prediction sums are taken from ``p`` itself,
    not derived from the residuals' sums (``sum p^2 = sum y^2 - 2 sum e y + sum e^2``): under
    heavy shrinkage a leave-one-out prediction is about ``-y / (n - 1)``, so ``sum p^2`` is
    ``n^2`` times smaller than the terms it would be the difference of, and in float32 that
    difference is rounding noise (correlations off by more than 1 were seen).
    """

    def __init__(self, n_alphas: int, n_targets: int):
        self.n, self.sy, self.syy = (np.zeros(n_targets) for _ in range(3))
        self.see, self.sp, self.spp, self.spy = (np.zeros((n_alphas, n_targets))
                                                 for _ in range(4))

    def add(self, bk, k: int, sl: slice, y, e, first: bool):
        """Add held-out rows: targets ``y`` and residuals ``e`` (rows, batch) of alpha ``k``.

        ``e`` is overwritten (with the predictions ``y - e``): callers pass a work array.
        """
        def total(a):  # column sums in the compute dtype (targets are centred)
            return bk.to_numpy(a.sum(0)).astype(np.float64)

        def dot(a, b):
            return bk.to_numpy(bk.coldot(a, b)).astype(np.float64)

        if first:
            self.n[sl] += y.shape[0]
            self.sy[sl] += total(y)
            self.syy[sl] += dot(y, y)
        self.see[k, sl] += dot(e, e)
        p = bk.subtract_from(y, e)
        self.sp[k, sl] += total(p)
        self.spp[k, sl] += dot(p, p)
        self.spy[k, sl] += dot(p, y)

    def scores(self) -> np.ndarray:
        """Negative mean squared error, (n_alphas, t)."""
        return -self.see / self.n[None, :]

    def y_var(self) -> np.ndarray:
        return self.syy / self.n

    def r(self) -> np.ndarray:
        """Pearson r of held-out predictions and targets, (n_alphas, t)."""
        n = self.n[None, :]
        mp, my = self.sp / n, self.sy / n
        cov = self.spy / n - mp * my
        var_p = self.spp / n - mp**2
        var_y = self.syy / n - my**2
        den = np.sqrt(np.clip(var_p, 0, None) * np.clip(var_y, 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, cov / den, np.nan)


def choose_alphas(scores: np.ndarray, per_target: bool) -> np.ndarray:
    """Index (t,) of the chosen alpha of every target from ``scores`` (n_alphas, t): each
    target's best, or (``per_target=False``) the alpha with the best mean score for all."""
    if per_target:
        return np.argmax(scores, 0)
    return np.full(scores.shape[1], int(np.argmax(scores.mean(1))))


def host_dtype(bk, dtype):
    """NumPy dtype of host arrays for backend ``dtype`` (float64 or float32)."""
    return np.float64 if dtype == bk.float64 else np.float32


def coef_from_spectrum(spec, targets: Targets, alphas, slices) -> np.ndarray:
    """Coefficients (t, p) for per-target ``alphas`` (t,) from a :class:`Spectrum`."""
    bk, design = targets.bk, spec.design
    coef = np.empty((targets.t, design.p), dtype=host_dtype(bk, targets.dtype))
    for sl in slices:
        C = spec.U.T @ targets.batch(sl)
        coef[sl] = bk.to_numpy(spec.coef(C, bk.asarray(alphas[sl], targets.dtype)).T)
    return coef


def _improved(acc: HeldOut, k: int, sl: slice, best: np.ndarray) -> np.ndarray:
    """Mask (batch,) of the targets of batch ``sl`` whose held-out error alpha ``k`` lowers
    (all of them for ``k = 0``); records ``k`` for them in ``best`` (t,).

    Strictly lower, so that ties keep the first alpha, as ``np.argmax`` of the scores.
    """
    lower = (acc.see[k, sl] < acc.see[best[sl], np.arange(sl.start, sl.stop)]) | (k == 0)
    best[sl][lower] = k
    return lower


def track_best(acc: HeldOut, k: int, sl: slice, best: np.ndarray, A_best, A, bk):
    """After alpha ``k`` of target batch ``sl``: record in ``best`` (t,) the targets whose
    held-out error it lowers, and keep their dual coefficients ``A`` (n, batch) in ``A_best``
    (``A`` itself for the first alpha; nothing when ``A`` is None). Returns ``A_best``."""
    lower = _improved(acc, k, sl, best)
    if A is None or A_best is None:
        return A
    bk.copy_columns(A_best, A, lower)
    return A_best


def batch_coef(spec, C, alphas, A_best) -> np.ndarray:
    """Coefficients (batch, p) of one target batch refitted with its chosen ``alphas``
    (batch,): ``Xc^T A_best`` from the kept dual coefficients, else (``A_best`` None) from
    the spectrum and ``C = U^T Yc``."""
    if A_best is None:
        return spec.design.bk.to_numpy(spec.coef(C, alphas).T)
    return spec.design.bk.to_numpy(spec.design.cross(A_best).T)


# size: 66 lines, of which the signature and numpydoc docstring are 29 (the body, 37, is one
# loop whose work arrays are reused across alphas: split, they would be passed back and forth).
def sweep_spectrum(spec, targets: Targets, alphas, opt: Options, held_out, desc: str
                   ) -> CVResult:
    """Every alpha over a thin spectrum, target batch by target batch, with the held-out
    residuals that ``held_out`` derives from the dual coefficients (the loop that
    :func:`loo_eigen` and :func:`lib.ridge.kfold.kfold_eigen` share).

    Per batch ``C = U^T Yc`` and, when ``U`` does not span the centred samples,
    ``Y_perp = Yc - U C``; per alpha the dual coefficients ``A = U diag(1/(s+alpha)) C``.
    The dual coefficients of each target's best alpha so far are kept, so the refit costs
    one product ``Xc^T A`` (dual form, one alpha per target).

    Parameters
    ----------
    spec : Spectrum
        Of the centred design (:func:`lib.ridge.design.spectrum`).
    targets : Targets
    alphas : ndarray of shape (n_alphas,)
    opt : Options
    held_out : callable
        ``held_out(acc, k, sl, Yc, A, Y_perp)`` adds alpha ``k``'s held-out residuals of
        target batch ``sl`` to the :class:`HeldOut` ``acc`` (``A``: (n, batch), reused
        across alphas; ``Y_perp``: None when ``U`` spans).
    desc : str
        Progress-bar label.

    Returns
    -------
    result : CVResult
    """
    design, bk, t, na = spec.design, targets.bk, targets.t, len(alphas)
    n, U, s, r = design.n, spec.U, spec.s, int(spec.s.shape[0])
    per_target = opt.alpha_per_target
    clock = Clock(bk, opt.times)
    a_t = bk.asarray(np.asarray(alphas), targets.dtype)
    inv_s = 1.0 / (s[:, None] + a_t[None, :])  # (r, n_alphas)
    keep_dual = per_target and spec.W is None  # refit from the kept dual coefficients
    acc = HeldOut(na, t)
    best = np.zeros(t, dtype=np.int64)
    coef = np.empty((t, design.p), dtype=host_dtype(bk, targets.dtype))
    slices = batches(n, design.p, t, r, opt.batch_size)
    for sl in opt.progress(slices, len(slices), desc):
        Yc = targets.batch(sl)
        C = U.T @ Yc
        Y_perp = None if spec.spans else Yc - U @ C
        A_best, A_work, D = None, None, None  # work arrays reused across alphas
        clock("targets")
        for k in range(na):
            D = bk.multiply(C, inv_s[:, k : k + 1], out=D)
            A = bk.matmul(U, D, out=A_work)
            held_out(acc, k, sl, Yc, A, Y_perp)
            if per_target:
                A_best = track_best(acc, k, sl, best, A_best, A if keep_dual else None, bk)
            if A_work is None and k < na - 1:
                A_work = bk.empty(A.shape, A.dtype) if keep_dual else A
            del A
        clock("loo")
        if per_target:
            coef[sl] = batch_coef(spec, C, a_t[bk.index(best[sl])], A_best)
            clock("coef")
        del C, Yc, Y_perp, A_best, A_work, D
    scores = acc.scores()
    if not per_target:
        best = choose_alphas(scores, False)
        coef = coef_from_spectrum(spec, targets, np.asarray(alphas)[best], slices)
        clock("coef")
    return CVResult(scores, best, coef, acc.y_var(), acc.r(), "eigen", r)


def loo_eigen(design: Design, targets: Targets, alphas, options: Options | None = None,
              K=None) -> CVResult:
    """Exact leave-one-out for every alpha from one eigendecomposition.

    For each alpha the dual coefficients ``A = U diag(1/(s+alpha)) C`` (one product) give
    the residuals ``(I - H) Yc = alpha A + Y_perp`` and ``1 - h_i = q_i + sum_j U_ij^2
    alpha/(s_j+alpha)``, with ``Y_perp = Yc - U C`` and ``q_i = 1 - 1/n - sum_j U_ij^2``.
    When ``U`` spans the centred sample space (rank ``n - 1`` with an intercept, the usual
    dual case) both are zero: no subtraction of nearly equal numbers at small alphas. The
    dual coefficients of each target's best alpha so far are kept, so the refit costs one
    product ``Xc^T A`` instead of two.

    Parameters
    ----------
    design : Design
        ``n`` samples, ``p`` features (dual form when ``n <= p``, else primal).
    targets : Targets
        ``t`` targets.
    alphas : ndarray of shape (n_alphas,)
    options : Options or None
    K : backend array of shape (n, n) or None
        The dual Gram matrix if already computed (overwritten).

    Returns
    -------
    result : CVResult
    """
    opt = options or Options()
    bk, n, t = design.bk, design.n, targets.t
    spec = spectrum(design, None if opt.alpha_per_target else t, K, opt.eigh_dtype,
                    Clock(bk, opt.times, opt.verbose))
    U, s = spec.U, spec.s
    a_t = bk.asarray(np.asarray(alphas), targets.dtype)
    inv_s = 1.0 / (s[:, None] + a_t[None, :])  # (r, n_alphas)
    UU = U * U
    one_minus_h = UU @ (inv_s * a_t[None, :])  # (n, n_alphas)
    if not spec.spans:
        one_minus_h += ((1.0 - 1.0 / n if design.fit_intercept else 1.0) - UU.sum(1))[:, None]
    inv_1mh = 1.0 / bk.maximum(one_minus_h, float(finfo(targets.dtype).eps))
    # LOO residuals alpha A / (1 - h) when U spans: one weight per sample and alpha
    weight = inv_1mh * a_t[None, :] if spec.spans else None
    del UU, one_minus_h, inv_s
    work = {}  # the residuals' work array of the current target batch

    def held_out(acc, k, sl, Yc, A, Y_perp):
        E = None if k == 0 else work["E"]
        if Y_perp is None:
            E = bk.multiply(A, weight[:, k : k + 1], out=E)
        else:
            E = bk.multiply(A, float(alphas[k]), out=E)
            E += Y_perp
            E *= inv_1mh[:, k : k + 1]
        work["E"] = E
        acc.add(bk, k, sl, Yc, E, first=k == 0)

    return sweep_spectrum(spec, targets, alphas, opt, held_out, "ridge LOO")
