"""lib.ridge.RidgeCV against scikit-learn and brute-force cross-validation."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import Ridge
from sklearn.linear_model import RidgeCV as SkRidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold
from sklearn.utils.estimator_checks import parametrize_with_checks

from lib.ridge import (
    AlphaGridWarning,
    CVResult,
    Design,
    RidgeCV,
    Targets,
    cv_splits,
    eigh_library,
    get_backend,
    kfold,
    kfold_eigen,
    kfold_per_fold,
    loo_cholesky,
    loo_eigen,
    partitions,
    probe_blas,
)
from lib.scoring import pearson_r

ALPHAS = np.logspace(-2, 4, 7)
BACKENDS = ("numpy", "torch")


def _problem(n, p, t, seed=0, offset=0.0, noise=1.0, n_test=40):
    """Linear targets with decaying feature spectrum, varied SNR across targets."""
    rng = np.random.default_rng(seed)
    scales = 1.0 / np.sqrt(1.0 + np.arange(p) / 10.0)
    X = rng.standard_normal((n + n_test, p)) * scales + offset
    B = rng.standard_normal((p, t)) / np.sqrt(p)
    snr = np.geomspace(0.05, 5.0, t)
    Y = (X - offset) @ B * snr + noise * rng.standard_normal((n + n_test, t)) + 2.0
    return X[:n], Y[:n], X[n:], Y[n:]


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("n,p", [(60, 150), (150, 40)], ids=["dual", "primal"])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_fixed_alpha_matches_sklearn_ridge(n, p, fit_intercept):
    X, Y, Xt, _ = _problem(n, p, 12, offset=1.5)
    for alpha in (0.1, 10.0, 1000.0):
        ours = RidgeCV(alphas=[alpha], fit_intercept=fit_intercept, dtype="float64",
                       device="cpu").fit(X, Y)
        ref = Ridge(alpha=alpha, fit_intercept=fit_intercept).fit(X, Y)
        assert ours.fit_info_["form"] == ("dual" if n <= p else "primal")
        assert _rel(ours.predict(Xt), ref.predict(Xt)) < 1e-4
        assert _rel(ours.coef_, ref.coef_) < 1e-4
        np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=1e-6,
                                   atol=1e-8 * np.abs(Y).max())


@pytest.mark.parametrize("n,p", [(60, 150), (150, 40)], ids=["dual", "primal"])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_feature_blocks_equal_concatenation(n, p, fit_intercept):
    X, Y, Xt, _ = _problem(n, p, 9, offset=0.5)
    cuts = [0, p // 4, p // 2 + 3, p]
    blocks = [X[:, a:b] for a, b in itertools.pairwise(cuts)]
    tblocks = [Xt[:, a:b] for a, b in itertools.pairwise(cuts)]
    full = RidgeCV(alphas=ALPHAS, fit_intercept=fit_intercept, dtype="float64").fit(X, Y)
    multi = RidgeCV(alphas=ALPHAS, fit_intercept=fit_intercept, dtype="float64").fit(blocks, Y)
    np.testing.assert_array_equal(multi.best_alphas_, full.best_alphas_)
    assert _rel(multi.coef_, full.coef_) < 1e-8
    assert _rel(multi.predict(tblocks), full.predict(Xt)) < 1e-8
    assert [c.shape[1] for c in multi.coef_blocks()] == [b.shape[1] for b in blocks]
    with pytest.raises(ValueError, match="blocks of sizes"):
        multi.predict(tblocks[:2])


@pytest.mark.parametrize("n,p,solver",
                         [(120, 300, "eigen"), (120, 300, "cholesky"), (300, 60, "auto")],
                         ids=["dual-eigen", "dual-cholesky", "primal"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_alpha_selection_matches_sklearn_ridgecv(n, p, solver, dtype):
    X, Y, Xt, Yt = _problem(n, p, 60, seed=1, n_test=200)
    ours = RidgeCV(alphas=ALPHAS, alpha_per_target=True, dtype=dtype, solver=solver).fit(X, Y)
    assert ours.fit_info_["solver"] == ("cholesky" if solver == "cholesky" else "eigen")
    ref = SkRidgeCV(alphas=ALPHAS, alpha_per_target=True).fit(X, Y)
    share = np.mean(ours.best_alphas_ == ref.alpha_)
    assert share > 0.9, f"only {share:.0%} of chosen alphas agree with scikit-learn"
    r_ours = np.mean(pearson_r(Yt, ours.predict(Xt)))
    r_ref = np.mean(pearson_r(Yt, ref.predict(Xt)))
    assert abs(r_ours - r_ref) <= 0.01 * abs(r_ref)
    # sklearn stores the squared LOO errors when asked; ours are their negative means
    ref_cv = SkRidgeCV(alphas=ALPHAS, alpha_per_target=True, store_cv_results=True).fit(X, Y)
    sk_scores = -ref_cv.cv_results_.mean(0).T  # (n_alphas, t)
    # float32: eigh / Cholesky of an ill-conditioned 120 x 120 Gram at alpha 0.01 carries ~1e-3
    # relative error in the smallest-alpha LOO errors (seen up to 1.02e-3, thread-count dependent)
    np.testing.assert_allclose(ours.cv_scores_, sk_scores,
                               rtol=1e-8 if dtype == "float64" else 5e-3)


@pytest.mark.parametrize("solver", ["eigen", "cholesky"])
def test_shared_alpha_matches_sklearn(solver):
    X, Y, Xt, _ = _problem(80, 200, 20, seed=2)
    ours = RidgeCV(alphas=ALPHAS, alpha_per_target=False, dtype="float64", solver=solver).fit(X, Y)
    ref = SkRidgeCV(alphas=ALPHAS, alpha_per_target=False).fit(X, Y)
    assert ours.alpha_ == ref.alpha_
    assert np.all(ours.best_alphas_ == ref.alpha_)
    assert _rel(ours.predict(Xt), ref.predict(Xt)) < 1e-8


@pytest.mark.parametrize("n,p,solver", [(25, 40, "eigen"), (25, 40, "cholesky"), (40, 12, "auto")],
                         ids=["dual-eigen", "dual-cholesky", "primal"])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_loo_scores_equal_brute_force_refits(n, p, solver, fit_intercept):
    X, Y, _, _ = _problem(n, p, 4, seed=3, offset=1.0)
    ours = RidgeCV(alphas=ALPHAS, fit_intercept=fit_intercept, dtype="float64",
                   solver=solver).fit(X, Y)
    for k, a in enumerate(ALPHAS):
        err = np.empty_like(Y)
        for i in range(n):
            keep = np.arange(n) != i
            m = Ridge(alpha=a, fit_intercept=fit_intercept).fit(X[keep], Y[keep])
            err[i] = Y[i] - m.predict(X[i : i + 1])[0]
        np.testing.assert_allclose(ours.cv_scores_[k], -(err**2).mean(0), rtol=1e-7)
    var = ((Y - Y.mean(0)) ** 2).mean(0) if fit_intercept else (Y**2).mean(0)
    np.testing.assert_allclose(ours.cv_r2_, 1 + ours.cv_scores_ / var, rtol=1e-12)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_loo_eigen_of_a_rank_deficient_dual_design_equals_brute_force(fit_intercept):
    """Rank 6 (7 uncentred) with 25 samples: the spectrum does not span the sample space, so the
    residuals and leverages need their parts outside it (``Y_perp``, ``q``)."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((25, 6)) @ rng.standard_normal((6, 40)) + 0.5
    Y = X[:, :3] @ rng.standard_normal((3, 4)) + rng.standard_normal((25, 4)) + 1.0
    ours = RidgeCV(alphas=ALPHAS, fit_intercept=fit_intercept, dtype="float64",
                   solver="eigen").fit(X, Y)
    assert ours.fit_info_["solver"] == "eigen" and ours.fit_info_["rank"] == 7 - fit_intercept
    for k, a in enumerate(ALPHAS):
        err = np.empty_like(Y)
        for i in range(25):
            keep = np.arange(25) != i
            m = Ridge(alpha=a, fit_intercept=fit_intercept).fit(X[keep], Y[keep])
            err[i] = Y[i] - m.predict(X[i : i + 1])[0]
        np.testing.assert_allclose(ours.cv_scores_[k], -(err**2).mean(0), rtol=1e-7)
    assert _rel(ours.coef_, _closed_form(X, Y, ours.best_alphas_) if fit_intercept else
                np.stack([Ridge(alpha=a, fit_intercept=False).fit(X, Y[:, j]).coef_
                          for j, a in enumerate(ours.best_alphas_)])) < 1e-8


@pytest.mark.parametrize("n,p", [(50, 90), (90, 20)], ids=["dual", "primal"])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_kfold_scores_equal_brute_force(n, p, fit_intercept):
    X, Y, Xt, _ = _problem(n, p, 5, seed=4, offset=0.7)
    ours = RidgeCV(alphas=ALPHAS, cv=4, fit_intercept=fit_intercept, dtype="float64").fit(X, Y)
    sse = np.zeros((len(ALPHAS), Y.shape[1]))
    for tr, va in KFold(4).split(X):
        for k, a in enumerate(ALPHAS):
            m = Ridge(alpha=a, fit_intercept=fit_intercept).fit(X[tr], Y[tr])
            sse[k] += ((Y[va] - m.predict(X[va])) ** 2).sum(0)
    np.testing.assert_allclose(ours.cv_scores_, -sse / n, rtol=1e-7)
    best = ALPHAS[np.argmax(-sse, 0)]
    np.testing.assert_array_equal(ours.best_alphas_, best)
    for j in range(Y.shape[1]):  # final model: refit on all data with the chosen alpha
        ref = Ridge(alpha=best[j], fit_intercept=fit_intercept).fit(X, Y[:, j])
        assert _rel(ours.predict(Xt)[:, j], ref.predict(Xt)) < 1e-6
    # a scikit-learn splitter gives the same folds
    split = RidgeCV(alphas=ALPHAS, cv=KFold(4), fit_intercept=fit_intercept,
                    dtype="float64").fit(X, Y)
    np.testing.assert_allclose(split.cv_scores_, ours.cv_scores_, rtol=1e-10)


def test_kfold_blocks_equal_concatenation():
    X, Y, Xt, _ = _problem(50, 80, 6, seed=5)
    a = RidgeCV(alphas=ALPHAS, cv=3, dtype="float64").fit([X[:, :30], X[:, 30:]], Y)
    b = RidgeCV(alphas=ALPHAS, cv=3, dtype="float64").fit(X, Y)
    np.testing.assert_allclose(a.cv_scores_, b.cv_scores_, rtol=1e-9)
    assert _rel(a.predict(Xt), b.predict(Xt)) < 1e-9


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,p", [(60, 150), (150, 40)], ids=["dual", "primal"])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_kfold_from_one_eigendecomposition_equals_one_per_fold(backend, n, p, fit_intercept):
    """Grouped folds: the held-out errors from the full fit's spectrum equal those of one
    eigendecomposition per fold (float64), and one sample per fold is leave-one-out."""
    X, Y, _, _ = _problem(n, p, 6, seed=21, offset=0.5)
    groups = np.arange(n) // 3
    folds = cv_splits(5, n, groups)
    assert partitions(folds, n)

    def fit(solver, *args):
        return solver(*_design_targets(backend, X, Y, "float64", fit_intercept), ALPHAS, *args)

    one = fit(kfold_eigen, [va for _, va in folds])
    per_fold = fit(kfold_per_fold, folds)
    np.testing.assert_allclose(one.scores, per_fold.scores, rtol=1e-9)
    np.testing.assert_allclose(one.cv_r, per_fold.cv_r, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(one.best, per_fold.best)
    assert _rel(one.coef, per_fold.coef) < 1e-9
    loo = fit(loo_eigen)
    singletons = fit(kfold_eigen, [np.array([i]) for i in range(n)])
    np.testing.assert_allclose(singletons.scores, loo.scores, rtol=1e-9)


def test_kfold_uses_one_eigendecomposition_only_for_a_partition(monkeypatch):
    """Splits whose training sets are not the complement of their validation sets (a gap,
    a shuffle-split), or whose held-out inverses would exceed the memory budget, go through one
    eigendecomposition per fold, and still equal brute force."""
    import importlib

    from sklearn.model_selection import ShuffleSplit

    kfold_module = importlib.import_module("lib.ridge.kfold")  # lib.ridge.kfold is the function

    n = 48
    X, Y, _, _ = _problem(n, 70, 3, seed=22)
    gap = [(np.r_[0:10, 18:n], np.arange(12, 16)), (np.arange(0, 30), np.arange(34, n))]
    shuffled = list(ShuffleSplit(3, test_size=0.2, random_state=0).split(X))
    assert partitions(cv_splits(4, n), n) and partitions(cv_splits(4, n, np.arange(n) // 4), n)
    assert not partitions(gap, n) and not partitions(shuffled, n)
    calls = []
    monkeypatch.setattr(kfold_module, "kfold_eigen",
                        lambda *a, **k: calls.append("eigen") or kfold_eigen(*a, **k))
    monkeypatch.setattr(kfold_module, "INVERSES_BUDGET", 7 * 12**2 * 4 * 8)  # 4 folds of 12
    for splits in (gap, shuffled, cv_splits(4, n), cv_splits(3, n)):  # 3 folds: over budget
        res = kfold(*_design_targets("numpy", X, Y, "float64"), ALPHAS, splits)
        sse, count = np.zeros((len(ALPHAS), 3)), 0
        for tr, va in splits:
            count += len(va)
            for k, a in enumerate(ALPHAS):
                sse[k] += ((Y[va] - Ridge(alpha=a).fit(X[tr], Y[tr]).predict(X[va])) ** 2).sum(0)
        np.testing.assert_allclose(res.scores, -sse / count, rtol=1e-8)
    assert calls == ["eigen"]


def test_float32_close_to_float64_and_batching_invariant():
    X, Y, Xt, _ = _problem(100, 250, 37, seed=6)
    f64 = RidgeCV(alphas=ALPHAS, dtype="float64").fit(X, Y)
    f32 = RidgeCV(alphas=ALPHAS, dtype="float32", target_batch_size=5).fit(X, Y)
    assert f32.coef_.dtype == np.float32 and f32.predict(Xt).dtype == np.float32
    assert np.mean(f32.best_alphas_ == f64.best_alphas_) > 0.9
    same = f32.best_alphas_ == f64.best_alphas_
    assert _rel(f32.predict(Xt)[:, same], f64.predict(Xt)[:, same]) < 1e-4
    f64b = RidgeCV(alphas=ALPHAS, dtype="float64", target_batch_size=4).fit(X, Y)
    np.testing.assert_allclose(f64b.coef_, f64.coef_, rtol=1e-10, atol=1e-12)


def test_torch_inputs_1d_target_and_sklearn_api():
    X, Y, Xt, Yt = _problem(70, 30, 1, seed=7)
    m = RidgeCV(alphas=ALPHAS, dtype="float64").fit(torch.from_numpy(X), torch.from_numpy(Y[:, 0]))
    ref = SkRidgeCV(alphas=ALPHAS).fit(X, Y[:, 0])
    pred = m.predict(Xt)
    assert pred.shape == (len(Xt),)
    assert _rel(pred, ref.predict(Xt)) < 1e-8
    assert m.n_features_in_ == 30 and m.coef_.shape == (1, 30) and m.intercept_.shape == (1,)
    assert m.cv_scores_.shape == (len(ALPHAS), 1)
    assert np.isclose(m.score(Xt, Yt[:, 0]), r2_score(Yt[:, 0], pred))  # R^2, as scikit-learn
    c = clone(m).set_params(alphas=[1.0, 2.0], cv=3)
    assert c.get_params()["cv"] == 3 and not hasattr(c, "coef_")


def test_input_errors():
    X, Y, _, _ = _problem(30, 10, 2)
    with pytest.raises(ValueError, match="samples"):
        RidgeCV().fit(X, Y[:-1])
    with pytest.raises(ValueError, match="alphas"):
        RidgeCV(alphas=[1.0, -1.0]).fit(X, Y)
    with pytest.raises(ValueError, match="rows"):
        RidgeCV().fit([X, X[:-1]], Y)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        RidgeCV().fit(Xn, Y)
    with pytest.raises(NotFittedError):
        RidgeCV().predict(X)


@pytest.mark.parametrize("t", [3, 400], ids=["via-dual-coef", "via-W"])
def test_dual_coefficient_routes_match_sklearn(t):
    """Few targets: coef through dual coefficients; many targets: through W = Xc^T U."""
    X, Y, Xt, _ = _problem(30, 45, t, seed=8, offset=0.3)
    ours = RidgeCV(alphas=[3.0], dtype="float64").fit([X[:, :20], X[:, 20:]], Y)
    ref = Ridge(alpha=3.0).fit(X, Y)
    assert _rel(ours.coef_, ref.coef_) < 1e-8
    assert _rel(ours.predict([Xt[:, :20], Xt[:, 20:]]), ref.predict(Xt)) < 1e-8


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocked_gram_matches_direct_product(backend):
    bk = get_backend(backend, "cpu")
    rng = np.random.default_rng(9)
    raw = [rng.standard_normal((601, k)) + 2.0 for k in (7, 30)]
    design = Design.from_blocks([bk.asarray(b) for b in raw], bk)
    Xc = np.concatenate([b - b.mean(0) for b in raw], 1)
    np.testing.assert_allclose(bk.to_numpy(design.gram()), Xc @ Xc.T, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(bk.to_numpy(design.primal_gram()), Xc.T @ Xc, rtol=1e-10)


def test_auto_solver_follows_conditioning():
    """torch backend: Cholesky for short, well-conditioned grids; NumPy backend: eigen."""
    X, Y, _, _ = _problem(60, 150, 5, seed=10)
    kw = {"backend": "torch", "warn_edge": None}
    well = RidgeCV(alphas=[10.0, 100.0, 1000.0], **kw).fit(X, Y)  # float32, s_max / 10 << 1e4
    ill = RidgeCV(alphas=[1e-3, 10.0], **kw).fit(X, Y)
    many = RidgeCV(alphas=np.logspace(1, 4, 12), **kw).fit(X, Y)
    assert well.fit_info_["solver"] == "cholesky"
    assert ill.fit_info_["solver"] == "eigen" and many.fit_info_["solver"] == "eigen"
    ref = RidgeCV(alphas=[10.0, 100.0, 1000.0], solver="eigen", dtype="float64",
                  warn_edge=None).fit(X, Y)
    np.testing.assert_array_equal(well.best_alphas_, ref.best_alphas_)
    np.testing.assert_allclose(well.cv_scores_, ref.cv_scores_, rtol=1e-4)
    numpy = RidgeCV(alphas=[10.0, 100.0, 1000.0], backend="numpy", warn_edge=None).fit(X, Y)
    assert numpy.fit_info_["solver"] == "eigen"
    with pytest.raises(ValueError, match="solver"):
        RidgeCV(solver="qr").fit(X, Y)


@pytest.mark.parametrize("cv,solver", [("loo", "eigen"), ("loo", "cholesky"), (4, "eigen")])
def test_cv_r_is_pearson_of_held_out_predictions(cv, solver):
    X, Y, _, _ = _problem(50, 90, 5, seed=8, offset=0.3)
    ours = RidgeCV(alphas=ALPHAS, cv=cv, solver=solver, dtype="float64", warn_edge=None).fit(X, Y)
    splits = [(np.delete(np.arange(50), i), np.array([i])) for i in range(50)] if cv == "loo" \
        else list(KFold(4).split(X))
    for k, a in enumerate(ALPHAS):
        pred = np.zeros_like(Y)
        for tr, va in splits:
            pred[va] = Ridge(alpha=a).fit(X[tr], Y[tr]).predict(X[va])
        np.testing.assert_allclose(ours.cv_r_[k], pearson_r(Y, pred), rtol=1e-6, atol=1e-9)
    # float32 work arrays (targets far from zero) give the same correlations
    single = RidgeCV(alphas=ALPHAS, cv=cv, solver=solver, warn_edge=None).fit(X, Y + 100.0)
    np.testing.assert_allclose(single.cv_r_, ours.cv_r_, atol=2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cv,solver", [("loo", "eigen"), ("loo", "cholesky"), (5, "eigen")])
def test_float32_cv_r_holds_under_heavy_shrinkage(backend, cv, solver):
    """At large alphas a leave-one-out prediction is about -y / (n - 1): its correlation must
    come from the predictions, not from differences of the residuals' sums, which in float32
    gave correlations off by more than 1 (the layer selection of chapter 02 reads them)."""
    rng = np.random.default_rng(12)
    n, p, t = 800, 120, 24
    X = rng.standard_normal((n, p))
    Y = 3.0 * rng.standard_normal((n, t)) + 5.0  # mostly noise: many targets shrink fully
    Y[:, :8] += 0.3 * X[:, :4] @ rng.standard_normal((4, 8))
    alphas = np.logspace(-1, 7, 9)
    kw = dict(alphas=alphas, cv=cv, solver=solver, backend=backend, warn_edge=None)
    single = RidgeCV(**kw).fit(X.astype(np.float32), Y.astype(np.float32))
    double = RidgeCV(**kw, dtype="float64").fit(X, Y)
    assert np.isfinite(single.cv_r_).all()
    np.testing.assert_allclose(single.cv_r_, double.cv_r_, atol=1e-3)
    if cv == "loo":  # the fully shrunk prediction is the left-out mean: r = -1
        np.testing.assert_allclose(double.cv_r_[-1], -1.0, atol=1e-3)


def test_groups_keep_every_group_on_one_side_of_a_fold():
    from sklearn.model_selection import GroupKFold

    # 30 images x 3 repeats: the repeats of an image share most of their response
    rng = np.random.default_rng(9)
    X_img, Y_img, _, _ = _problem(30, 40, 4, seed=9, n_test=1)
    groups = np.repeat(np.arange(30), 3)
    X = X_img[groups]
    Y = Y_img[groups] + 0.1 * rng.standard_normal((90, 4))
    grouped = RidgeCV(alphas=ALPHAS, cv=5, dtype="float64", warn_edge=None).fit(X, Y, groups=groups)
    sse = np.zeros((len(ALPHAS), 4))
    for tr, va in GroupKFold(5).split(X, Y, groups):
        assert not set(groups[tr]) & set(groups[va])
        for k, a in enumerate(ALPHAS):
            sse[k] += ((Y[va] - Ridge(alpha=a).fit(X[tr], Y[tr]).predict(X[va])) ** 2).sum(0)
    np.testing.assert_allclose(grouped.cv_scores_, -sse / 90, rtol=1e-7)
    same = RidgeCV(alphas=ALPHAS, cv=GroupKFold(5), dtype="float64", warn_edge=None).fit(
        X, Y, groups=groups)
    np.testing.assert_allclose(same.cv_scores_, grouped.cv_scores_, rtol=1e-10)
    # ungrouped folds see an image's repeats on both sides: they look better than they are
    leaky = RidgeCV(alphas=ALPHAS, cv=KFold(5, shuffle=True, random_state=0), dtype="float64",
                    warn_edge=None).fit(X, Y)
    assert leaky.cv_scores_.max(0).mean() > grouped.cv_scores_.max(0).mean()
    with pytest.raises(ValueError, match="loo"):
        RidgeCV(alphas=ALPHAS).fit(X, Y, groups=groups)
    with pytest.raises(ValueError, match="both sides"):
        RidgeCV(alphas=ALPHAS, cv=KFold(5, shuffle=True, random_state=0)).fit(X, Y, groups=groups)
    with pytest.raises(ValueError, match="one label per"):
        RidgeCV(alphas=ALPHAS, cv=3).fit(X, Y, groups=groups[:-1])


def test_warns_when_chosen_alphas_sit_at_the_grid_edge():
    import warnings

    from lib.ridge import DEFAULT_ALPHAS, AlphaGridWarning

    assert DEFAULT_ALPHAS[0] == pytest.approx(0.1) and DEFAULT_ALPHAS[-1] == pytest.approx(1e7)
    X, Y, _, _ = _problem(100, 20, 6, seed=10, noise=1.0)
    Y = Y[:, 3:]  # signal-to-noise 0.5 to 5
    inside = RidgeCV(alphas=DEFAULT_ALPHAS, dtype="float64").fit(X, Y)  # optimum inside the grid
    lo, hi = inside.alpha_edge_fraction_
    with warnings.catch_warnings():
        warnings.simplefilter("error", AlphaGridWarning)
        RidgeCV(alphas=DEFAULT_ALPHAS, dtype="float64").fit(X, Y)
    assert lo == hi == 0.0
    # a grid of only large penalties: every target picks the smallest
    with pytest.warns(AlphaGridWarning, match="smallest .* for 100%"):
        RidgeCV(alphas=[1e5, 1e6, 1e7], dtype="float64").fit(X, Y)
    # pure noise targets: the prediction is the mean, the largest alpha wins
    noise = np.random.default_rng(11).standard_normal((100, 50))
    with pytest.warns(AlphaGridWarning, match="largest"):
        RidgeCV(alphas=[1e-3, 1e-2, 1e-1], dtype="float64").fit(X, noise)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AlphaGridWarning)
        RidgeCV(alphas=[1e5, 1e6, 1e7], dtype="float64", warn_edge=None).fit(X, Y)


# ----------------------------------------------------------------------------- scikit-learn API
_FLOAT32_PREDICTIONS = {
    "check_regressor_multioutput": "float32 compute (the default, for memory with ~100k "
    "targets) predicts float32; the check demands float64 predictions. Passes with "
    "dtype='float64' (checked below).",
    "check_methods_sample_order_invariance": "the check allows a relative difference of 1e-7, "
    "less than one float32 rounding step (1.2e-7): BLAS may sum a row in another order when it "
    "sits elsewhere in the batch, and predictions then differ by one step (seen once, with four "
    "test processes on two cores). Passes with dtype='float64' (checked below).",
}


def _expected_failures(est):
    return _FLOAT32_PREDICTIONS if est.dtype == "float32" else {}


@parametrize_with_checks(
    [RidgeCV(backend="numpy", dtype="float64"), RidgeCV(backend="torch", dtype="float64"),
     RidgeCV(backend="numpy")],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_estimator_checks(estimator, check):
    """scikit-learn's checks for multi-output regressors, on both CPU backends."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlphaGridWarning)
        check(estimator)


def test_score_is_r2_averaged_over_targets():
    X, Y, Xt, Yt = _problem(80, 30, 6, seed=12)
    m = RidgeCV(alphas=ALPHAS, dtype="float64", warn_edge=None).fit(X, Y)
    pred = m.predict(Xt)
    assert np.isclose(m.score(Xt, Yt), r2_score(Yt, pred))
    assert not np.isclose(m.score(Xt, Yt), np.mean(pearson_r(Yt, pred)))


# ----------------------------------------------------------------------------- solvers, backends
def _design_targets(backend, X, Y, dtype="float64", fit_intercept=True):
    bk = get_backend(backend, "cpu")
    dt = bk.dtype(dtype)
    design = Design.from_blocks([bk.asarray(X, dt)], bk, fit_intercept)
    return design, Targets.from_array(np.asarray(Y, dt.name if backend == "numpy" else dtype),
                                      bk, dt, fit_intercept)


def _closed_form(X, Y, alphas):
    """Ridge with intercept for per-target alphas: (Xc^T Xc + a I)^-1 Xc^T Yc."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    G = Xc.T @ Xc
    return np.stack([np.linalg.solve(G + a * np.eye(len(G)), Xc.T @ Yc[:, j])
                     for j, a in enumerate(alphas)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("solver,n,p", [("loo_eigen", 40, 90), ("loo_eigen", 90, 30),
                                        ("loo_cholesky", 40, 90), ("kfold", 40, 90),
                                        ("kfold", 90, 30)])
def test_solver_functions_match_closed_form_and_sklearn(backend, solver, n, p):
    """Each solver function returns sklearn's LOO errors (k-fold: brute force) and the
    closed-form coefficients of the alphas it chose."""
    X, Y, _, _ = _problem(n, p, 5, seed=13, offset=0.4)
    design, targets = _design_targets(backend, X, Y)
    if solver == "kfold":
        splits = cv_splits(3, n)
        res = kfold(design, targets, ALPHAS, splits)
        sse = np.zeros((len(ALPHAS), 5))
        for tr, va in splits:
            for k, a in enumerate(ALPHAS):
                sse[k] += ((Y[va] - Ridge(alpha=a).fit(X[tr], Y[tr]).predict(X[va])) ** 2).sum(0)
        ref = -sse / n
    else:
        res = {"loo_eigen": loo_eigen, "loo_cholesky": loo_cholesky}[solver](
            design, targets, ALPHAS)
        sk = SkRidgeCV(alphas=ALPHAS, alpha_per_target=True, store_cv_results=True).fit(X, Y)
        ref = -sk.cv_results_.mean(0).T
    assert isinstance(res, CVResult) and res.scores.shape == (len(ALPHAS), 5)
    np.testing.assert_allclose(res.scores, ref, rtol=1e-7)
    np.testing.assert_array_equal(res.best, np.argmax(ref, 0))
    assert _rel(res.coef, _closed_form(X, Y, ALPHAS[res.best])) < 1e-8


@pytest.mark.parametrize("cv,solver", [("loo", "eigen"), ("loo", "cholesky"), (4, "auto"),
                                       ("loo", "auto")])
@pytest.mark.parametrize("n,p", [(70, 160), (160, 50)], ids=["dual", "primal"])
def test_backends_agree_in_float32(cv, solver, n, p):
    """NumPy and torch give the same fit within float32 tolerance."""
    X, Y, Xt, _ = _problem(n, p, 24, seed=14)
    alphas = np.logspace(0, 4, 5)
    fits = [RidgeCV(alphas=alphas, cv=cv, solver=solver, backend=b, warn_edge=None).fit(X, Y)
            for b in BACKENDS]
    a, b = fits
    assert a.fit_info_["backend"] == "numpy" and b.fit_info_["backend"] == "torch"
    assert solver == "auto" or a.fit_info_["solver"] == b.fit_info_["solver"]
    np.testing.assert_allclose(a.cv_scores_, b.cv_scores_, rtol=2e-4)
    # cv_r_ comes from sums of the held-out predictions themselves, so the backends agree at
    # every alpha, heavy shrinkage included (r of the left-out mean ~ -1)
    np.testing.assert_allclose(a.cv_r_, b.cv_r_, atol=2e-4)
    at = np.searchsorted(alphas, a.best_alphas_), np.arange(Y.shape[1])
    ok = a.cv_r_[at] > 0
    assert ok.sum() >= 5
    np.testing.assert_allclose(a.cv_r_[at][ok], b.cv_r_[at][ok], atol=1e-4)
    assert np.mean(a.best_alphas_ == b.best_alphas_) >= 0.95
    same = a.best_alphas_ == b.best_alphas_
    assert _rel(a.predict(Xt)[:, same], b.predict(Xt)[:, same]) < 1e-4
    assert a.coef_.dtype == b.coef_.dtype == np.float32


def test_eigensolver_setting_changes_rounding_only(monkeypatch, request):
    from lib.ridge.machine import EIGH_ENV_VAR

    request.addfinalizer(eigh_library.cache_clear)  # later tests read the restored setting

    X, Y, Xt, _ = _problem(200, 300, 40)
    fits = {}
    for name in ("scipy", "torch"):
        monkeypatch.setenv(EIGH_ENV_VAR, name)
        eigh_library.cache_clear()
        assert eigh_library() == name
        fits[name] = RidgeCV(backend="numpy", warn_edge=None).fit(X, Y)
        assert fits[name].fit_info_["eigh"] == name
    a, b = fits["scipy"], fits["torch"]
    assert np.mean(a.best_alphas_ == b.best_alphas_) >= 0.95
    same = a.best_alphas_ == b.best_alphas_
    assert _rel(a.predict(Xt)[:, same], b.predict(Xt)[:, same]) < 1e-4
    monkeypatch.setenv(EIGH_ENV_VAR, "lapack")
    eigh_library.cache_clear()
    with pytest.raises(ValueError, match=EIGH_ENV_VAR):
        eigh_library()
    monkeypatch.delenv(EIGH_ENV_VAR)
    eigh_library.cache_clear()
    assert eigh_library() in ("scipy", "torch")  # decided by the machine, not by a timing


def test_backend_setting_probe_and_environment(monkeypatch):
    probe = probe_blas()
    assert probe["numpy"] > 0 and probe["torch"] > 0 and probe["faster"] in BACKENDS
    monkeypatch.delenv("LIB_RIDGE_BACKEND", raising=False)
    # never chosen by timing: the choice (and so the rounding) must not depend on the load
    assert get_backend("auto", "cpu").name == "numpy"
    X, Y, _, _ = _problem(30, 10, 2)
    m = RidgeCV(device="cpu", warn_edge=None).fit(X, Y)
    assert m.backend_ == "numpy" and m.fit_info_["blas_gflops"] == probe
    for name in BACKENDS:
        monkeypatch.setenv("LIB_RIDGE_BACKEND", name)
        assert get_backend("auto", "cpu").name == name
        assert RidgeCV(device="cpu", warn_edge=None).fit(X, Y).backend_ == name
    assert get_backend("numpy", "cpu").name == "numpy"  # an explicit setting wins
    monkeypatch.setenv("LIB_RIDGE_BACKEND", "mkl")
    with pytest.raises(ValueError, match="LIB_RIDGE_BACKEND"):
        get_backend("auto", "cpu")
    with pytest.raises(ValueError, match="backend"):
        RidgeCV(backend="jax").fit(X, Y)
