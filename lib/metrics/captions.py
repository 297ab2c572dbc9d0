"""Caption metrics with the COCO caption evaluation toolkit (pycocoevalcap).

BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D) are computed by pycocoevalcap's own scorers on
captions tokenized by the Stanford PTB tokenizer it ships, exactly as in the COCO caption
evaluation server, through the Java runners of :mod:`lib.metrics.java_tools`.

Captions are sanitized before scoring: Unicode NFKC normalization, every line break,
tab or control character becomes a space, ``|`` (METEOR's field separator) becomes a
space, and runs of spaces collapse. On ordinary captions this is the identity.

Scales are pycocoevalcap's own: BLEU, METEOR and ROUGE-L in [0, 1], CIDEr in [0, 10].
Published tables print them x100 (see :func:`lib.metrics.reference.to_published_scale`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .java_tools import MeteorScorer, _package_dir, ptb_tokenize

#: Metric names returned by :func:`caption_metrics`, in display order.
CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029|]")
_SPACES_RE = re.compile(r"\s+")


def sanitize_caption(text: str) -> str:
    """Make a caption safe for the line-based Java tools.

    Parameters
    ----------
    text : str
        A caption.

    Returns
    -------
    clean : str
        NFKC-normalized, with line breaks, tabs, control characters and ``|`` replaced by
        spaces, runs of whitespace collapsed and the ends stripped.
    """
    if not isinstance(text, str):
        raise TypeError(f"captions must be str, got {type(text).__name__}: {text!r}")
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL_RE.sub(" ", text)
    return _SPACES_RE.sub(" ", text).strip()


def _dedupe(items: Sequence[str]) -> list[str]:
    """Order-preserving removal of duplicates."""
    return list(dict.fromkeys(items))


def _validate(hypotheses, references) -> tuple[list[str], list[list[str]]]:
    if isinstance(hypotheses, str):
        raise TypeError("hypotheses must be a list of captions, got a single str.")
    hypotheses = list(hypotheses)
    references = list(references)
    if len(hypotheses) == 0:
        raise ValueError("hypotheses is empty: nothing to score.")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses and references must have the same length (one list of reference "
            f"captions per hypothesis); got {len(hypotheses)} hypotheses and "
            f"{len(references)} reference lists."
        )
    hyps = [sanitize_caption(h) for h in hypotheses]
    refs = []
    for i, ref in enumerate(references):
        if isinstance(ref, str):
            raise TypeError(
                f"references[{i}] is a single str; each item must be a list of reference "
                "captions (wrap it: [caption])."
            )
        clean = [r for r in _dedupe(sanitize_caption(r) for r in ref) if r]
        if not clean:
            raise ValueError(
                f"references[{i}] holds no non-empty reference caption; every hypothesis "
                "needs at least one reference."
            )
        refs.append(clean)
    return hyps, refs


def _spice(gts: dict, res: dict):
    """SPICE when its Stanford CoreNLP models are installed, else a 'skipped' string."""
    lib = Path(_package_dir(), "spice", "lib")
    if not list(lib.glob("stanford-corenlp-3.6.0*.jar")):
        return (
            "skipped: SPICE needs Stanford CoreNLP 3.6.0 models (pycocoevalcap/spice/lib), "
            "not installed",
            None,
        )
    from pycocoevalcap.spice.spice import Spice

    score, scores = Spice().compute_score(gts, res)
    return float(score), np.array([s["All"]["f"] for s in scores], dtype=float)


def caption_metrics(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    per_item: bool = False,
    spice: bool = False,
    meteor: MeteorScorer | None = None,
) -> dict:
    """COCO caption metrics of decoded captions against their references.

    Parameters
    ----------
    hypotheses : sequence of str, length n
        One generated caption per image.
    references : sequence of sequences of str, length n
        The reference captions of each image. Duplicates are removed (order-preserving,
        after sanitization) before scoring.
    per_item : bool
        Also return per-caption scores under ``"per_item"`` (for permutation tests).
    spice : bool
        Also compute SPICE. It needs Stanford CoreNLP models that pycocoevalcap downloads
        on first use; when they are not installed the value is a ``"skipped: ..."`` string.
    meteor : MeteorScorer or None
        An open scorer to reuse across many calls (saves the ~5 s Java start-up); by
        default one is started and closed inside this call.

    Returns
    -------
    metrics : dict
        ``"BLEU-1"`` .. ``"BLEU-4"``, ``"METEOR"``, ``"ROUGE-L"``, ``"CIDEr"`` as floats on
        pycocoevalcap's scale (BLEU/METEOR/ROUGE-L in [0, 1], CIDEr in [0, 10]), ``"n"``,
        optional ``"SPICE"``, and with ``per_item=True`` a dict ``"per_item"`` of arrays of
        shape (n,) with keys ``"BLEU-1"`` .. ``"BLEU-4"``, ``"METEOR"``, ``"ROUGE-L"``,
        ``"CIDEr"`` (and ``"SPICE"``). Corpus BLEU and METEOR pool n-gram statistics over
        captions, so they are not the mean of their per-item values; ROUGE-L and CIDEr are.

    Raises
    ------
    ValueError
        Lengths differ, nothing to score, or an item has no non-empty reference.
    TypeError
        A single str where a list of captions is expected.
    """
    hyps, refs = _validate(hypotheses, references)
    gts, res = _tokenized(hyps, refs)
    out, items = _coco_scores(gts, res, meteor)
    if spice:
        s, s_items = _spice(gts, res)
        out["SPICE"] = s
        if s_items is not None:
            items["SPICE"] = s_items
    out["n"] = len(hyps)
    if per_item:
        out["per_item"] = items
    return out


def _tokenized(hyps: list[str], refs: list[list[str]]) -> tuple[dict, dict]:
    """PTB-tokenize every caption in one Java call; pycocoevalcap's ``gts`` and ``res``.

    Returns
    -------
    gts : dict of int to list of str
        Item i -> its tokenized references.
    res : dict of int to list of str
        Item i -> [its tokenized hypothesis].
    """
    tokens = ptb_tokenize(hyps + [r for ref in refs for r in ref])
    res = {i: [tokens[i]] for i in range(len(hyps))}
    gts, pos = {}, len(hyps)
    for i, ref in enumerate(refs):
        gts[i] = tokens[pos : pos + len(ref)]
        pos += len(ref)
    return gts, res


def _coco_scores(gts: dict, res: dict, meteor: MeteorScorer | None) -> tuple[dict, dict]:
    """Corpus and per-item BLEU-1..4, METEOR, ROUGE-L and CIDEr (in that order).

    Returns
    -------
    corpus : dict of str to float
    items : dict of str to ndarray of shape (n,)
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    out: dict = {}
    items: dict = {}
    bleu, bleu_items = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        out[f"BLEU-{n + 1}"] = float(bleu[n])
        items[f"BLEU-{n + 1}"] = np.asarray(bleu_items[n], dtype=float)
    if meteor is None:
        with MeteorScorer() as scorer:
            m, m_items = scorer.compute_score(gts, res)
    else:
        m, m_items = meteor.compute_score(gts, res)
    out["METEOR"], items["METEOR"] = float(m), np.asarray(m_items, dtype=float)
    r, r_items = Rouge().compute_score(gts, res)
    out["ROUGE-L"], items["ROUGE-L"] = float(r), np.asarray(r_items, dtype=float)
    c, c_items = Cider().compute_score(gts, res)
    out["CIDEr"], items["CIDEr"] = float(c), np.asarray(c_items, dtype=float)
    return out, items
