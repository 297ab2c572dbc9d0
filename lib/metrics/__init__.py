"""Evaluation of decoded captions and embeddings.

- :func:`caption_metrics`: BLEU-1..4, METEOR, ROUGE-L, CIDEr with pycocoevalcap.
- :func:`retrieval_from_similarity`, :func:`retrieval_topk`: k-way top-1 retrieval (from a
  similarity matrix, or from embeddings), both directions, 95% intervals, options recorded.
- :func:`permutation_test`, :func:`bootstrap_ci`: paired tests and intervals on per-item scores.
- :func:`embedding_similarity`, :func:`embedding_metrics`: sentence-encoder and CLIP text cosine.
- :func:`score_reference_runs`, :func:`load_published`, :func:`read_roi_reference`,
  :func:`to_published_scale`: the original study's released captions and published results.
- :func:`jsonable`: metric dicts (with NumPy arrays) to JSON-ready objects.
"""

from .captions import CAPTION_METRICS, MeteorScorer, caption_metrics, ptb_tokenize, sanitize_caption
from .embeddings import CLIP_MODEL, SENTENCE_MODEL, embedding_metrics, embedding_similarity
from .reference import (
    REFERENCE_ROOT,
    REFERENCE_RUNS,
    load_published,
    read_reference_captions,
    read_roi_reference,
    score_reference_runs,
    to_published_scale,
)
from .retrieval import retrieval_from_similarity, retrieval_table, retrieval_topk
from .serialize import jsonable
from .stats import bootstrap_ci, permutation_test, wilson_interval

__all__ = [
    "CAPTION_METRICS",
    "CLIP_MODEL",
    "REFERENCE_ROOT",
    "REFERENCE_RUNS",
    "SENTENCE_MODEL",
    "MeteorScorer",
    "bootstrap_ci",
    "caption_metrics",
    "embedding_metrics",
    "embedding_similarity",
    "jsonable",
    "load_published",
    "permutation_test",
    "ptb_tokenize",
    "read_reference_captions",
    "read_roi_reference",
    "retrieval_from_similarity",
    "retrieval_table",
    "retrieval_topk",
    "sanitize_caption",
    "score_reference_runs",
    "to_published_scale",
    "wilson_interval",
]
