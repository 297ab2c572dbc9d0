"""Does a category ROI name its category? ROI captions against a base rate of random regions.

The share of an ROI's captions holding one of its category's words (read from a vocabulary
file, :func:`lib.decoding.roi_captions.load_lexicon`) is compared with the shares of random
voxel sets of the same size drawn from nsdgeneral outside the ROI (:func:`null_patterns`),
captioned the same way (:func:`pattern_captions`); the base rate is their mean and the p-value
``(1 + #(null rates >= ROI rate)) / (1 + n_null)`` (:func:`permutation_p`). Notebook 06 runs
the steps: :func:`category_patterns`, :func:`category_test`, :func:`category_test_figure`, and
the captioner's ceiling on true query tokens (:func:`category_ceiling`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lib.decoding.roi_captions import ROIS, has_roi, indicator_tokens, mentions


def null_patterns(voxel_ijk: np.ndarray, mask: np.ndarray, n_null: int, seed: int = 0,
                  kind: str = "blob") -> np.ndarray:
    """Indicator patterns of random voxel sets the size of an ROI, drawn outside it.

    Parameters
    ----------
    voxel_ijk : ndarray of shape (n_voxels, 3)
        Voxel positions of the prepared subject (all of nsdgeneral).
    mask : ndarray of shape (n_voxels,), bool
        The ROI; null sets hold ``mask.sum()`` voxels, none of them in the ROI.
    n_null : int
        Number of null patterns.
    seed : int
    kind : {"blob", "scatter"}
        ``"blob"``: the voxels nearest to a random seed voxel (a compact region of cortex, as an
        ROI is); ``"scatter"``: voxels drawn uniformly at random.

    Returns
    -------
    patterns : ndarray of shape (n_null, n_voxels), float32
        1 in each null set's voxels, 0 elsewhere.
    """
    mask = np.asarray(mask, bool)
    pool = np.flatnonzero(~mask)
    size = int(mask.sum())
    if size == 0 or pool.size < size:
        raise ValueError(f"cannot draw null sets of {size} voxels from the {pool.size} voxels "
                         "outside the ROI: the ROI must be non-empty and smaller than half of "
                         "nsdgeneral.")
    if kind not in ("blob", "scatter"):
        raise ValueError(f"null kind {kind!r}: expected 'blob' or 'scatter'.")
    rng = np.random.default_rng(seed)
    xyz = np.asarray(voxel_ijk, np.float64)[pool]
    out = np.zeros((n_null, mask.size), np.float32)
    for i in range(n_null):
        if kind == "scatter":
            chosen = rng.choice(pool.size, size, replace=False)
        else:
            centre = xyz[rng.integers(pool.size)]
            dist = ((xyz - centre) ** 2).sum(1) + rng.uniform(0, 1e-3, pool.size)  # random ties
            chosen = np.argpartition(dist, size - 1)[:size]
        out[i, pool[chosen]] = 1.0
    return out


def blip2_captioner(model, processor, **generate_kwargs):
    """A captioner for :func:`category_test`: BLIP-2's language model on query tokens.

    Parameters
    ----------
    model, processor
        The captioning BLIP-2 (:func:`lib.decoding.generate.load_captioner`).
    **generate_kwargs
        Passed to :func:`lib.decoding.generate.generate_captions` (``num_beams``,
        ``max_new_tokens``, ...).

    Returns
    -------
    captioner : callable
        ``captioner(tokens, sample)`` with ``tokens`` of shape (n, n_query, hidden) returns
        ``n`` captions: greedy (or beam) ones, or sampled ones when ``sample`` is true (torch's
        random state decides the draws).
    """
    from lib.decoding.generate import generate_captions

    def captioner(tokens, sample=False):
        kw = {**generate_kwargs, **({"num_beams": 1} if sample else {})}
        return generate_captions(tokens, model, processor, progress=False, do_sample=sample,
                                 **kw)

    return captioner


def pattern_captions(decoder, patterns: np.ndarray, captioner, scale: float,
                     n_captions: int = 1, seed: int = 0) -> list[list[str]]:
    """Captions of voxel patterns through a brain map, ``n_captions`` per pattern.

    Parameters
    ----------
    decoder : torch.nn.Module
        Brain map (see :func:`indicator_tokens`).
    patterns : ndarray of shape (n_patterns, n_voxels)
    captioner : callable
        ``captioner(tokens, sample) -> list of str`` (:func:`blip2_captioner`).
    scale : float
    n_captions : int
        Captions per pattern: 1 = the greedy caption; more = sampled captions (the language
        model's own distribution; torch seeded with ``seed``).
    seed : int

    Returns
    -------
    captions : list (n_patterns) of list (n_captions) of str
    """
    tokens = np.repeat(indicator_tokens(decoder, patterns, scale), n_captions, axis=0)
    torch.manual_seed(seed)
    caps = list(captioner(tokens, n_captions > 1))
    return [caps[i:i + n_captions] for i in range(0, len(caps), n_captions)]


def mention_rates(captions: Sequence[Sequence[str]], words: Sequence[str]) -> np.ndarray:
    """Share of each pattern's captions that name a category.

    Parameters
    ----------
    captions : list (n_patterns) of list of str
        :func:`pattern_captions` output.
    words : sequence of str
        The category's words (:func:`mentions`).

    Returns
    -------
    rates : ndarray of shape (n_patterns,)
    """
    return np.array([np.mean([mentions(c, words) for c in caps]) for caps in captions])


def permutation_p(observed: float, null: np.ndarray) -> float:
    """One-sided p-value of ``observed`` against a null sample: ``(1 + #(null >= observed)) /
    (1 + n_null)`` (never 0; the smallest reachable value is ``1 / (1 + n_null)``)."""
    null = np.asarray(null, np.float64)
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + null.size))


@dataclass
class RoiPatterns:
    """One ROI of the category test: its indicator pattern and its null patterns.

    Attributes
    ----------
    roi : str
    words : tuple of str
        The category's words (empty when the lexicon lists the ROI as missing).
    vocabulary : str
        ``"available"`` or why the lexicon has no words for the ROI.
    n_null : int
    null_kind : str
    n_voxels : int
        0 when the subject lacks the ROI or it has no vocabulary (then not tested).
    patterns : ndarray of shape (1 + n_null, n_voxels_total) or None
        Row 0 the ROI's pattern, then the null patterns (:func:`null_patterns`); None when the
        ROI is not tested.
    """

    roi: str
    words: tuple
    vocabulary: str
    n_null: int
    null_kind: str
    n_voxels: int = 0
    patterns: np.ndarray | None = None


def category_patterns(subject, lexicon: dict, rois: Sequence[str] = ROIS, n_null: int = 39,
                      null_kind: str = "blob", seed: int = 0) -> list[RoiPatterns]:
    """The patterns of the category test: each category ROI's and ``n_null`` null patterns.

    Parameters
    ----------
    subject : lib.nsd.PreparedSubject
    lexicon : dict
        :func:`lib.decoding.roi_captions.load_lexicon` output.
    rois : sequence of str
        ROIs to test; those the lexicon neither has words for nor lists as missing are left
        out.
    n_null : int
        Null patterns per ROI (smallest reachable p: ``1 / (1 + n_null)``).
    null_kind : {"blob", "scatter"}
        See :func:`null_patterns`.
    seed : int
        The null patterns of the k-th ROI of ``rois`` are drawn with ``seed + 1000 * k``.

    Returns
    -------
    patterns : list of RoiPatterns
        In the order of ``rois``.
    """
    vocab, missing = lexicon["vocabulary"], lexicon.get("missing", {})
    out = []
    for k, roi in enumerate(rois):
        if roi not in vocab and roi not in missing:
            continue
        entry = RoiPatterns(roi, tuple(vocab.get(roi, ())), "available" if roi in vocab else
                            f"no category vocabulary available: {missing[roi]}", n_null,
                            null_kind)
        if roi in vocab and has_roi(subject, roi):
            mask = np.asarray(subject.roi_mask(roi), bool)
            entry.n_voxels = int(mask.sum())
            entry.patterns = np.vstack([
                mask[None].astype(np.float32),
                null_patterns(subject.voxel_ijk, mask, n_null, seed + 1000 * k, null_kind)])
        out.append(entry)
    return out


def null_test(rates: np.ndarray) -> dict:
    """The ROI's mention rate against its null patterns' rates.

    Parameters
    ----------
    rates : ndarray of shape (1 + n_null,)
        :func:`mention_rates` of the ROI's pattern (first) and of its null patterns.

    Returns
    -------
    test : dict
        ``mention_rate``, ``base_rate`` (mean null rate), ``null_q95`` (95th percentile of the
        null rates), ``p_value`` (:func:`permutation_p`), ``null_rates`` (JSON list).
    """
    return {"mention_rate": float(rates[0]), "base_rate": float(rates[1:].mean()),
            "null_q95": float(np.quantile(rates[1:], 0.95)),
            "p_value": permutation_p(rates[0], rates[1:]),
            "null_rates": json.dumps([round(float(r), 4) for r in rates[1:]])}


def category_test(decoders: dict, patterns: Sequence[RoiPatterns], captioner, scale: float,
                  n_captions: int = 1, seed: int = 0):
    """Does a category ROI name its category more often than random regions of its size?

    For each brain map, every ROI's pattern and null patterns (:func:`category_patterns`) are
    captioned the same way, in one call (:func:`pattern_captions`), and scored by
    :func:`mention_rates` and :func:`null_test`: the base rate is the mean null mention rate;
    the p-value is :func:`permutation_p` of the ROI's rate against the null rates.

    Parameters
    ----------
    decoders : dict
        Stage name -> brain map.
    patterns : sequence of RoiPatterns
        :func:`category_patterns` output.
    captioner : callable
        ``captioner(tokens, sample) -> list of str`` (:func:`blip2_captioner`).
    scale : float
        See :func:`lib.decoding.roi_captions.indicator_tokens`.
    n_captions : int
        Captions per pattern (1: greedy; more: sampled, torch seeded with ``seed``).
    seed : int

    Returns
    -------
    table : pandas.DataFrame
        One row per (roi, stage): ``roi``, ``stage``, ``n_voxels``, ``n_captions``,
        ``mention_rate``, ``n_null``, ``base_rate``, ``null_q95``, ``p_value``, ``null_kind``,
        ``null_rates`` (JSON list of the null patterns' rates), ``vocabulary`` ("available" or
        the reason it is missing); NaN rates for ROIs not tested.
    """
    import pandas as pd

    tested = [p for p in patterns if p.patterns is not None]
    rows = []
    for stage, decoder in decoders.items():
        caps = (pattern_captions(decoder, np.vstack([p.patterns for p in tested]), captioner,
                                 scale, n_captions, seed) if tested else [])
        start = 0
        for p in patterns:
            row = {"roi": p.roi, "stage": stage, "n_voxels": p.n_voxels,
                   "n_captions": n_captions, "mention_rate": np.nan, "n_null": p.n_null,
                   "base_rate": np.nan, "null_q95": np.nan, "p_value": np.nan,
                   "null_kind": p.null_kind, "null_rates": "[]", "vocabulary": p.vocabulary}
            if p.patterns is not None:
                n = len(p.patterns)
                row.update(null_test(mention_rates(caps[start:start + n], p.words)))
                start += n
            rows.append(row)
    return pd.DataFrame(rows)


def category_test_figure(table):
    """Each category ROI's mention rate against its null rates, one panel per stage.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`category_test` output.

    Returns
    -------
    fig : matplotlib.figure.Figure
        Null rates as grey dots (jittered), their mean (the base rate) as a black bar, the
        ROI's rate as a red diamond, ``p`` above each ROI; the test is stated in the title.
    """
    import matplotlib.pyplot as plt

    stages = list(dict.fromkeys(table.stage))
    rois = list(dict.fromkeys(table.roi))
    fig, axes = plt.subplots(1, len(stages), figsize=(3.2 + 1.2 * len(rois) * len(stages), 3.6),
                             sharey=True, squeeze=False)
    rng = np.random.default_rng(0)
    for ax, stage in zip(axes[0], stages):
        for x, roi in enumerate(rois):
            row = table[(table.stage == stage) & (table.roi == roi)].iloc[0]
            null = np.asarray(json.loads(row.null_rates), float)
            if not null.size:
                ax.text(x, 0.5, "no\nvocabulary", ha="center", va="center", fontsize=8,
                        color="0.4")
                continue
            ax.scatter(x + rng.uniform(-0.2, 0.2, null.size), null, s=8, color="0.6",
                       label="random regions" if x == 0 else None)
            ax.hlines(row.base_rate, x - 0.3, x + 0.3, color="k",
                      label="base rate" if x == 0 else None)
            ax.scatter([x], [row.mention_rate], marker="D", s=50, color="tab:red", zorder=3,
                       label="ROI" if x == 0 else None)
            ax.text(x, 1.04, f"p={row.p_value:.3g}", ha="center", fontsize=8)
        ax.set_xticks(range(len(rois)), rois)
        ax.set_ylim(-0.05, 1.12)
        ax.set_title(stage, fontsize=10)
    axes[0, 0].set_ylabel("share of captions naming\nthe ROI's category")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, frameon=False)
    r = table.iloc[0]
    kind = {"blob": "compact", "scatter": "scattered"}.get(r.null_kind, r.null_kind)
    fig.suptitle(f"ROI vs {int(r.n_null)} random {kind} voxel sets of its size outside it "
                 f"({int(r.n_captions)} caption(s) each); p = (1 + #null >= ROI) / "
                 f"(1 + {int(r.n_null)})", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig




def category_ceiling(subject, features, feature_ids, model, processor, vocabulary: dict,
                     split: str = "test", max_images: int = 50, **generate_kwargs):
    """How often the captioner names a category when it sees the image's *true* query tokens.

    For each ROI of ``vocabulary``, the ``split`` images whose reference captions name its
    category are captioned from their true Q-Former outputs; the share of captions naming the
    category is the ceiling for an ROI caption (a captioner that never says "face" for face
    images cannot say it for the faces ROI either).

    Returns
    -------
    table : pandas.DataFrame
        ``category``, ``n_images``, ``named_share``, ``example``.
    """
    import pandas as pd

    from lib.decoding.generate import generate_captions
    from lib.decoding.stage1 import lookup_features

    ids = np.asarray(subject.image_ids(split))
    refs = subject.captions(ids)
    rows = []
    for roi, words in vocabulary.items():
        keep = [i for i, caps in zip(ids, refs)
                if any(mentions(c, words) for c in caps)][:max_images]
        if not keep:
            rows.append({"category": roi, "n_images": 0, "named_share": np.nan, "example": ""})
            continue
        tokens = lookup_features(np.asarray(features), np.asarray(feature_ids), np.asarray(keep))
        caps = generate_captions(tokens, model, processor, progress=False, **generate_kwargs)
        share = float(np.mean([mentions(c, words) for c in caps]))
        rows.append({"category": roi, "n_images": len(keep), "named_share": share,
                     "example": caps[0]})
    return pd.DataFrame(rows)
