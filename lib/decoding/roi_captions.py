"""What does one brain region "say"? Captions from ROI indicator patterns.

Following the original study (``roi_optimal_inference.py`` and ``get_roi`` in its
``data_utils.py``): an ROI's indicator pattern (1 in the ROI's voxels, 0 elsewhere) is pushed
through the linear part of the brain map, ``d_q = W_q x`` for every query token q; each token's
direction is normalised to unit L2 norm over the hidden dimension and scaled by a constant
(``const = 11`` for real BLIP-2 in the original), and the map's intercept is added back:
``t_q = scale * d_q / ||d_q|| + b_q``. The resulting query tokens are captioned like any
prediction (:func:`lib.decoding.generate.generate_captions`).

For a map with a memory window the pattern fills block 0 (the trial itself) and the other
blocks stay zero. ``scale="auto"`` replaces the original's hand-set 11 by the typical size of a
real image's deviation from the mean tokens: the median over training images and tokens of
``||true_q - mean_q||`` (so the ROI pattern is "as strong as a typical image").
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

#: ROIs of the analysis, in the order of the original study's table.
ROIS = ("V1", "V2", "V3", "hV4", "visualrois", "faces", "bodies", "places", "words")

#: Words that name each category ROI's preferred content in a caption (toy-world ground truth).
CATEGORY_WORDS = {
    "faces": ("face", "faces", "smiley", "smiling", "emoji", "grinning"),
    "bodies": ("person", "people", "body", "bodies", "figure", "figures", "man", "woman",
               "human", "child", "kid"),
    "words": ("word", "words", "letter", "letters", "text", "sign", "signs", "written", "label",
              "banner"),
    "places": ("sky", "grass", "grassy", "field", "water", "lake", "room", "indoors"),
}


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


def names_category(caption: str, roi: str) -> bool | None:
    """Whether a caption names the category of a category ROI (None for other ROIs)."""
    words = CATEGORY_WORDS.get(roi)
    if words is None:
        return None
    tokens = set(re.findall(r"[a-z]+", caption.lower()))
    return bool(tokens & set(words))


def named_categories(caption: str) -> list[str]:
    """The category ROIs whose words a caption contains (e.g. ``["faces", "places"]``)."""
    tokens = set(re.findall(r"[a-z]+", caption.lower()))
    return [roi for roi, words in CATEGORY_WORDS.items() if tokens & set(words)]


def roi_captions(
    decoders: dict,
    subject,
    model,
    processor,
    scale: float,
    rois: Sequence[str] = ROIS,
    **generate_kwargs,
):
    """Caption every ROI's pattern through every brain map.

    Parameters
    ----------
    decoders : dict
        Stage name (e.g. ``"stage1"``) -> brain map.
    subject : lib.nsd.PreparedSubject
    model, processor
        The captioning BLIP-2 (:func:`lib.decoding.generate.load_captioner`).
    scale : float
        See :func:`indicator_tokens`.
    rois : sequence of str
        ROIs missing from the subject are reported with an empty caption and ``n_voxels = 0``.
    **generate_kwargs
        Passed to :func:`lib.decoding.generate.generate_captions`.

    Returns
    -------
    table : pandas.DataFrame
        One row per (roi, stage): ``roi``, ``stage``, ``n_voxels``, ``caption``,
        ``names_category`` (True/False for category ROIs, None otherwise) and
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
                         "names_category": names_category(cap, r) if r in by_roi else None,
                         "categories_named": ", ".join(named_categories(cap))})
    return pd.DataFrame(rows)


def roi_sizes(subject, rois: Sequence[str] = ROIS) -> dict:
    """Number of prepared voxels in each ROI (0 when the subject lacks the ROI file)."""
    return {r: int(subject.roi_mask(r).sum()) if _has_roi(subject, r) else 0 for r in rois}


def _has_roi(subject, name: str) -> bool:
    try:
        return bool(np.any(subject.roi_mask(name)))
    except KeyError:
        return False


def category_ceiling(subject, features, feature_ids, model, processor, split: str = "test",
                     max_images: int = 50, **generate_kwargs):
    """How often the captioner names a category when it sees the image's *true* query tokens.

    For each category ROI, the ``split`` images whose reference captions name the category are
    captioned from their true Q-Former outputs; the share of captions naming the category is
    the ceiling for an ROI caption (a captioner that never says "face" for face images cannot
    say it for the faces ROI either).

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
    for roi in CATEGORY_WORDS:
        keep = [i for i, caps in zip(ids, refs)
                if any(names_category(c, roi) for c in caps)][:max_images]
        if not keep:
            rows.append({"category": roi, "n_images": 0, "named_share": np.nan, "example": ""})
            continue
        tokens = lookup_features(np.asarray(features), np.asarray(feature_ids), np.asarray(keep))
        caps = generate_captions(tokens, model, processor, progress=False, **generate_kwargs)
        share = float(np.mean([names_category(c, roi) for c in caps]))
        rows.append({"category": roi, "n_images": len(keep), "named_share": share,
                     "example": caps[0]})
    return pd.DataFrame(rows)
