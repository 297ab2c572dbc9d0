"""What does one brain region "say"? Captions from ROI indicator patterns, against a base rate.

Following the original study: an ROI's indicator pattern (1 in the ROI's voxels, 0 elsewhere)
is pushed through the linear part of the brain map, ``d_q = W_q x`` for every query token q;
each token's direction is normalised to unit L2 norm over the hidden dimension and scaled by a
constant (``const = 11`` for real BLIP-2 in the original), and the map's intercept is added
back: ``t_q = scale * d_q / ||d_q|| + b_q``. The resulting query tokens are captioned like any
prediction (:func:`lib.decoding.generate.generate_captions`).

For a map with a memory window the pattern fills block 0 (the trial itself) and the other
blocks stay zero. ``scale="auto"`` replaces the original's hand-set 11 by the typical size of a
real image's deviation from the mean tokens: the median over training images and tokens of
``||true_q - mean_q||`` (so the ROI pattern is "as strong as a typical image").

Whether a category ROI "names its category" is a test, not a word count
(:func:`category_test`): the share of the ROI's captions holding one of the category's words
(read from a vocabulary file, :func:`load_lexicon`) is compared with the shares of random voxel
sets of the same size drawn from nsdgeneral outside the ROI (:func:`null_patterns`), captioned
the same way; the base rate is their mean and the p-value
``(1 + #(null rates >= ROI rate)) / (1 + n_null)`` (:func:`permutation_p`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

#: ROIs of the analysis, in the order of the original study's table.
ROIS = ("V1", "V2", "V3", "hV4", "visualrois", "faces", "bodies", "places", "words")


def load_lexicon(path: str | os.PathLike) -> dict:
    """Read a category vocabulary file.

    The file is JSON: ``{"source": str, "vocabulary": {roi: [words or phrases]},
    "missing": {roi: reason}}``. ``vocabulary`` maps a category ROI name (as accepted by
    ``PreparedSubject.roi_mask``: ``"faces"``, ``"bodies"``, ``"places"``, ``"words"``) to the
    lower-case words and phrases that name its preferred category; ``missing`` lists the
    category ROIs for which the data offer no vocabulary, with the reason. The toy world writes
    ``truth/lexicon.json`` (:func:`lib.toyworld.captions.write_lexicon`); for real NSD it is
    built from COCO's category annotations (``python -m lib.nsd lexicon``).

    Parameters
    ----------
    path : path-like
        The file (notebook 06's ``category_lexicon`` parameter).

    Returns
    -------
    lexicon : dict
        ``source``, ``vocabulary`` (roi -> tuple of str) and ``missing`` (roi -> str).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"category vocabulary {str(path)!r} not found (parameter category_lexicon). A toy "
            "world writes truth/lexicon.json when it is built (`python -m lib.toyworld build "
            "--preset toy`); for real NSD build it from COCO's category annotations: "
            f"`python -m lib.nsd lexicon --nsd-root NSD_ROOT --out {path}`.")
    try:
        data = json.loads(path.read_text())
        vocab = {str(r): tuple(str(w).lower() for w in words)
                 for r, words in data["vocabulary"].items()}
        missing = {str(r): str(why) for r, why in data.get("missing", {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{path} is not a category vocabulary file: expected JSON with 'vocabulary' "
            "{roi: [words]} and optional 'missing' {roi: reason}; rebuild it (see "
            "lib.decoding.roi_captions.load_lexicon).") from err
    empty = [r for r, words in vocab.items() if not words]
    if empty:
        raise ValueError(f"{path}: ROIs {empty} have an empty word list; list them under "
                         "'missing' with the reason instead.")
    return {"source": str(data.get("source", "")), "vocabulary": vocab, "missing": missing}


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z]+", text.lower())) + " "


def mentions(caption: str, phrases: Sequence[str]) -> bool:
    """Whether a caption holds one of ``phrases`` as whole words (case-insensitive).

    >>> mentions("A smiley face in the sky.", ["smiley face", "grin"])
    True
    >>> mentions("a man surfing", ["ma"])
    False
    """
    text = _words(caption)
    return any(_words(p) in text for p in phrases if _words(p).strip())


def names_category(caption: str, roi: str, vocabulary: dict) -> bool | None:
    """Whether a caption names the category of ``roi`` (None if it has no vocabulary)."""
    words = vocabulary.get(roi)
    return None if words is None else mentions(caption, words)


def named_categories(caption: str, vocabulary: dict) -> list[str]:
    """The ROIs of ``vocabulary`` whose category a caption names (e.g. ``["faces"]``)."""
    return [roi for roi, words in vocabulary.items() if mentions(caption, words)]


def roi_indicator(subject, name: str) -> np.ndarray:
    """Indicator pattern of an ROI over the prepared voxels.

    Parameters
    ----------
    subject : lib.nsd.PreparedSubject
    name : str
        ROI name accepted by ``subject.roi_mask`` (e.g. ``"V1"``, ``"faces"``).

    Returns
    -------
    x : ndarray of shape (n_voxels,), float32
        1 in the ROI's voxels, 0 elsewhere (as the original's ``roi[roi > 0] = 1``).
    """
    mask = np.asarray(subject.roi_mask(name), dtype=bool)
    if not mask.any():
        raise ValueError(f"ROI {name!r} has no voxel in {subject}; pick another ROI.")
    return mask.astype(np.float32)


def indicator_tokens(decoder, indicator: np.ndarray, scale: float) -> np.ndarray:
    """Query tokens of an ROI pattern, normalised per token as in the original study.

    Parameters
    ----------
    decoder : torch.nn.Module
        An affine brain map (e.g. :class:`lib.decoding.stage1.QueryTokenDecoder`); with several
        input blocks (``block_sizes``), the pattern goes in block 0.
    indicator : ndarray of shape (n_voxels,) or (n_patterns, n_voxels)
    scale : float
        Norm given to every token's direction (the original's ``const``).

    Returns
    -------
    tokens : ndarray of shape (n_patterns, n_query, hidden), float32
        ``scale * d_q / (||d_q|| + 1e-8) + b_q`` with ``d = W x`` and ``b`` the intercept.
    """
    x = np.atleast_2d(np.asarray(indicator, np.float32))
    sizes = list(getattr(decoder, "block_sizes", [x.shape[1]]))
    if x.shape[1] != sizes[0]:
        raise ValueError(
            f"the ROI pattern has {x.shape[1]} voxels but the decoder's first input block has "
            f"{sizes[0]}: was the decoder fitted on an ROI subset or another subject?"
        )
    dev = next(decoder.parameters()).device

    def run(first):
        blocks = [torch.as_tensor(first, device=dev)] + [
            torch.zeros(len(first), s, device=dev) for s in sizes[1:]]
        with torch.no_grad():
            return decoder(blocks if len(blocks) > 1 else blocks[0]).double().cpu().numpy()

    intercept = run(np.zeros_like(x))
    direction = run(x) - intercept
    norm = np.linalg.norm(direction, axis=-1, keepdims=True)
    return (scale * direction / (norm + 1e-8) + intercept).astype(np.float32)


def auto_scale(true_tokens: np.ndarray) -> float:
    """Median over images and tokens of ``||true_q - mean_q||`` (training images only).

    Parameters
    ----------
    true_tokens : ndarray of shape (n_images, n_query, hidden)
    """
    t = np.asarray(true_tokens, np.float64)
    return float(np.median(np.linalg.norm(t - t.mean(axis=0), axis=-1)))


def roi_captions(
    decoders: dict,
    subject,
    model,
    processor,
    scale: float,
    vocabulary: dict,
    rois: Sequence[str] = ROIS,
    **generate_kwargs,
):
    """Caption every ROI's pattern through every brain map (greedy or beam: one caption each).

    Parameters
    ----------
    decoders : dict
        Stage name (e.g. ``"stage1"``) -> brain map.
    subject : lib.nsd.PreparedSubject
    model, processor
        The captioning BLIP-2 (:func:`lib.decoding.generate.load_captioner`).
    scale : float
        See :func:`indicator_tokens`.
    vocabulary : dict
        ROI -> category words (``load_lexicon(path)["vocabulary"]``).
    rois : sequence of str
        ROIs missing from the subject are reported with an empty caption and ``n_voxels = 0``.
    **generate_kwargs
        Passed to :func:`lib.decoding.generate.generate_captions`.

    Returns
    -------
    table : pandas.DataFrame
        One row per (roi, stage): ``roi``, ``stage``, ``n_voxels``, ``caption``,
        ``names_category`` (True/False for ROIs with a vocabulary, None otherwise) and
        ``categories_named`` (every category the caption names: a caption that names all of
        them is not specific to its ROI).
    """
    import pandas as pd

    from lib.decoding.generate import generate_captions

    present = [r for r in rois if _has_roi(subject, r)]
    patterns = np.stack([roi_indicator(subject, r) for r in present]) if present else None
    rows = []
    for stage, decoder in decoders.items():
        caps = []
        if patterns is not None:
            tokens = indicator_tokens(decoder, patterns, scale)
            caps = generate_captions(tokens, model, processor, progress=False, **generate_kwargs)
        by_roi = dict(zip(present, caps))
        for r in rois:
            cap = by_roi.get(r, "")
            n = int(subject.roi_mask(r).sum()) if r in by_roi else 0
            rows.append({"roi": r, "stage": stage, "n_voxels": n, "caption": cap,
                         "names_category": (names_category(cap, r, vocabulary)
                                            if r in by_roi else None),
                         "categories_named": ", ".join(named_categories(cap, vocabulary))})
    return pd.DataFrame(rows)


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


def category_test(decoders: dict, subject, captioner, scale: float, lexicon: dict,
                  rois: Sequence[str] = ROIS, n_null: int = 39, n_captions: int = 1,
                  null_kind: str = "blob", seed: int = 0):
    """Does a category ROI name its category more often than random regions of its size?

    For each ROI with a vocabulary and each brain map, the ROI's pattern and ``n_null`` null
    patterns (:func:`null_patterns`: random voxel sets of the ROI's size drawn from nsdgeneral
    outside the ROI) are captioned the same way (:func:`pattern_captions`: all patterns of a
    brain map in one call) and scored by :func:`mention_rates`. The base rate is the mean null
    mention rate; the p-value is :func:`permutation_p` of the ROI's rate against the
    null rates.

    Parameters
    ----------
    decoders : dict
        Stage name -> brain map.
    subject : lib.nsd.PreparedSubject
    captioner : callable
        ``captioner(tokens, sample) -> list of str`` (:func:`blip2_captioner`).
    scale : float
    lexicon : dict
        :func:`load_lexicon` output.
    rois : sequence of str
        ROIs to test; those without vocabulary get a row with ``vocabulary`` saying why.
    n_null : int
        Null patterns per ROI and stage (smallest reachable p: ``1 / (1 + n_null)``).
    n_captions : int
        Captions per pattern (1: greedy; more: sampled).
    null_kind : {"blob", "scatter"}
    seed : int

    Returns
    -------
    table : pandas.DataFrame
        One row per (roi, stage) for the ROIs that have a vocabulary or are listed as missing:
        ``roi``, ``stage``, ``n_voxels``, ``n_captions``, ``mention_rate``, ``n_null``,
        ``base_rate``, ``null_q95`` (95th percentile of the null rates), ``p_value``,
        ``null_kind``, ``null_rates`` (JSON list of the null patterns' rates), ``vocabulary``
        ("available" or the reason it is missing).
    """
    import pandas as pd

    vocab, missing = lexicon["vocabulary"], lexicon.get("missing", {})
    rows = []
    for stage, decoder in decoders.items():
        tested = []  # (row, roi patterns + null patterns), captioned together below
        for k, roi in enumerate(rois):
            if roi not in vocab and roi not in missing:
                continue
            row = {"roi": roi, "stage": stage, "n_voxels": 0, "n_captions": n_captions,
                   "mention_rate": np.nan, "n_null": n_null, "base_rate": np.nan,
                   "null_q95": np.nan, "p_value": np.nan, "null_kind": null_kind,
                   "null_rates": "[]",
                   "vocabulary": "available" if roi in vocab else
                   f"no category vocabulary available: {missing[roi]}"}
            rows.append(row)
            if roi in vocab and _has_roi(subject, roi):
                mask = np.asarray(subject.roi_mask(roi), bool)
                row["n_voxels"] = int(mask.sum())
                tested.append((row, np.vstack([
                    mask[None].astype(np.float32),
                    null_patterns(subject.voxel_ijk, mask, n_null, seed + 1000 * k, null_kind)])))
        if not tested:
            continue
        caps = pattern_captions(decoder, np.vstack([p for _, p in tested]), captioner, scale,
                                n_captions, seed)
        for i, (row, _) in enumerate(tested):
            rates = mention_rates(caps[i * (n_null + 1):(i + 1) * (n_null + 1)],
                                  vocab[row["roi"]])
            row.update(mention_rate=float(rates[0]), base_rate=float(rates[1:].mean()),
                       null_q95=float(np.quantile(rates[1:], 0.95)),
                       p_value=permutation_p(rates[0], rates[1:]),
                       null_rates=json.dumps([round(float(r), 4) for r in rates[1:]]))
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


def roi_sizes(subject, rois: Sequence[str] = ROIS) -> dict:
    """Number of prepared voxels in each ROI (0 when the subject lacks the ROI file)."""
    return {r: int(subject.roi_mask(r).sum()) if _has_roi(subject, r) else 0 for r in rois}


def _has_roi(subject, name: str) -> bool:
    try:
        return bool(np.any(subject.roi_mask(name)))
    except KeyError:
        return False


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
