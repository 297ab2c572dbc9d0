"""The convergence claims as statistics: size against score, trained against untrained, depths.

Every statistic starts from the layers chosen on the training images (:func:`best_layers`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lib.encoding.convergence import model_features
from lib.encoding.fit import encode_layers
from lib.encoding.options import EncodingOptions
from lib.encoding.rois import CATEGORY_ROIS, EARLY_ROIS, roi_masks
from lib.encoding.scores import best_layers


def size_score_spearman(scores, roi: str = "nsdgeneral", trained_only: bool = True):
    """Spearman correlation between parameter count and selected-layer score, per family.

    The p-value is exact and one-sided: the share of the ``n!`` orderings of the family's
    scores whose correlation with size is at least the observed one. With three models a
    perfect ordering (rho = +1) has p = 1/6: size order alone cannot be significant in a
    family of three, and a null brain orders its models perfectly one time in six.

    Parameters
    ----------
    scores : pandas.DataFrame
        ``scores.csv`` (with ``selected``, ``trained``, ``n_params``).
    roi : str
    trained_only : bool
        Leave out the untrained (random-weight) controls.

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

    Parameters
    ----------
    scores : pandas.DataFrame
        ``scores.csv`` (with ``selected``, ``trained``, ``n_params``).
    roi : str

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
                                   options: EncodingOptions, roi: str = "nsdgeneral",
                                   n_boot: int = 1000):
    """Add a bootstrap interval over test images to :func:`trained_vs_untrained`.

    The best layer of each model (chosen on training data) is refitted on the ROI's voxels
    from the cached features, and both models' test predictions are scored on the same
    resampled test images (:func:`lib.scoring.paired_bootstrap_mean_r`).

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`trained_vs_untrained` for the same ``roi``.
    subject : lib.nsd.PreparedSubject
    zoo : sequence of dict
        The zoo entries of the convergence run.
    cache_dir : path-like
        Its feature caches (``<convergence folder>/features``), so the features come from
        them.
    options : EncodingOptions
        The options of the convergence run (``seed`` also seeds the resamples).
    roi : str
    n_boot : int

    Returns
    -------
    table : pandas.DataFrame
        ``table`` with ``ci_low``, ``ci_high`` (95% interval of the difference) and
        ``p_value`` (share of resamples in which the trained model does not win).
    """
    from lib.scoring import paired_bootstrap_mean_r

    mask = roi_masks(subject, [roi])[roi]
    Y_train, train_ids = subject.averaged_betas("train", roi=mask)
    Y_test, test_ids = subject.averaged_betas("test", roi=mask)
    all_ids = np.union1d(train_ids, test_ids)
    entries = {e["name"]: e for e in zoo}

    def predict(name, layer):
        feats = model_features(entries[name], subject, all_ids, cache_dir, options)
        result = encode_layers({layer: feats[layer]}, all_ids, Y_train, train_ids, Y_test,
                               test_ids, options, return_prediction=True)
        return result[layer]["prediction"]

    table = table.copy()
    for col in ("ci_low", "ci_high", "p_value"):
        table[col] = np.nan
    for i, row in table.iterrows():
        boot = paired_bootstrap_mean_r(Y_test, predict(row["trained"], int(row["trained_layer"])),
                                       predict(row["untrained"], int(row["untrained_layer"])),
                                       n_boot=n_boot, seed=options.seed)
        for col in ("ci_low", "ci_high", "p_value"):
            table.loc[i, col] = boot[col]
    return table


def peak_depths(scores, early=EARLY_ROIS, category=CATEGORY_ROIS, modality: str = "vision",
                trained_only: bool = True):
    """Normalised depth of the best layer per ROI, early visual against category ROIs.

    The best layer is chosen on training data (:func:`best_layers`).

    Parameters
    ----------
    scores : pandas.DataFrame
        ``scores.csv`` (with ``selected``, ``depth``, ``trained``).
    early, category : sequence of str
        The early visual and the category-selective ROIs.
    modality : {"vision", "language"}
    trained_only : bool

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
