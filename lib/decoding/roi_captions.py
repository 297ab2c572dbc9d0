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

Whether a category ROI "names its category" is tested against a base rate in
:mod:`lib.decoding.category`, with the words of :func:`load_lexicon`.
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
        An affine brain map (e.g. :class:`lib.decoding.decoder.QueryTokenDecoder`); with several
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


def roi_sizes(subject, rois: Sequence[str] = ROIS) -> dict:
    """Number of prepared voxels in each ROI (0 when the subject lacks the ROI file)."""
    return {r: int(subject.roi_mask(r).sum()) if has_roi(subject, r) else 0 for r in rois}


def has_roi(subject, name: str) -> bool:
    """Whether ``subject`` has the ROI ``name`` with at least one prepared voxel."""
    try:
        return bool(np.any(subject.roi_mask(name)))
    except KeyError:
        return False
