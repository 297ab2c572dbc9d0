"""Pieces of the evaluation of a decoding run: captions, controls, retrieval and their outputs.

Chapter 05 chains them, one visible step each, for every run (``decoding/<run>/predictions.h5``):
captions from the predicted query tokens (:func:`lib.decoding.generate.generate_captions`); the
controls (:func:`derangement` for the shuffled brain, :func:`nearest_train` for the nearest
training caption, BLIP-2 on the image for the upper bound); caption metrics of every condition
(:func:`score_conditions`, :func:`itc_image_caption_scores`) and the permutation test brain vs
shuffled brain (:func:`brain_vs_shuffled`); retrieval (:mod:`lib.decoding.retrieval`); the
fraction of the image upper bound (:func:`ratio_to_upper_bound`); and the files
(:func:`write_run_outputs`; :func:`metrics_table`, :func:`metrics_retrieval_table` read them
back as tables).

Q-Former outputs share a large image-independent component (raw cosines between different
images are close to 1), so the nearest training image is found by the cosine of embeddings
centred on the mean true embedding of the TRAINING images.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lib.decoding.stage1 import cosine_matrix

#: Caption metrics reported as a fraction of the image upper bound.
RATIO_METRICS = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "ITC-S")

#: Caption metrics with per-caption scores used by the permutation test (and ITC-S when scored).
PERMUTATION_METRICS = ("CIDEr", "METEOR")

SHUFFLE_DESCRIPTION = (
    "predictions permuted across test images (fixed-seed derangement): each image is paired with "
    "the caption decoded from another test image's fMRI"
)

#: What each control is, written next to its numbers in ``metrics.json``.
CONTROL_DESCRIPTIONS = {
    "shuffled_brain": SHUFFLE_DESCRIPTION,
    "nearest_train": "first COCO caption of the training image with the nearest true Q-Former "
                     "embedding (cosine) to the prediction",
    "image_upper_bound": "BLIP-2 captioning the test image itself",
}

#: Column of ``captions_<run>.csv`` holding each condition's captions.
CONDITION_COLUMNS = {"brain": "caption", "shuffled_brain": "shuffled_brain",
                     "nearest_train": "nearest_train", "image_upper_bound": "image_upper_bound"}


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A random permutation of ``range(n)`` with no fixed point (``n >= 2``).

    Returns
    -------
    perm : ndarray of shape (n,)
    """
    if n < 2:
        raise ValueError(f"need at least 2 test images to shuffle, got {n}")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def nearest_train(pred_test: np.ndarray, true_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the training image whose true embedding is closest to each prediction.

    Parameters
    ----------
    pred_test : ndarray of shape (n_test, n_query, hidden)
    true_train : ndarray of shape (n_train, n_query, hidden)

    Returns
    -------
    index : ndarray of shape (n_test,)
        Row of ``true_train``.
    similarity : ndarray of shape (n_test,)
        Its cosine similarity.
    """
    sim = cosine_matrix(pred_test, true_train)
    idx = sim.argmax(axis=1)
    return idx, sim[np.arange(len(idx)), idx]


def score_captions(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                   embeddings: bool = True, meteor=None) -> tuple[dict, dict]:
    """Corpus caption metrics plus per-caption scores.

    Parameters
    ----------
    hypotheses : sequence of str, length n
    references : sequence of sequences of str, length n
    embeddings : bool
        Also compute sentence-embedding and CLIP text similarity
        (:func:`lib.metrics.embedding_metrics`; each is ``{"skipped": ...}`` when its model is
        not available).
    meteor : lib.metrics.captions.MeteorScorer or None
        An open METEOR scorer to reuse.

    Returns
    -------
    metrics : dict
        BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap scale), ``n`` and, with
        ``embeddings``, ``SentenceSim`` / ``CLIP-T`` (mean cosine or ``skipped``).
    per_item : dict of str to ndarray of shape (n,)
    """
    from lib.metrics import caption_metrics, jsonable

    hyps, refs = list(hypotheses), [list(r) for r in references]
    out = dict(caption_metrics(hyps, refs, per_item=True, meteor=meteor))
    per_item = {k: np.asarray(v, float) for k, v in out.pop("per_item", {}).items()}
    if embeddings:
        from lib.metrics import embedding_metrics

        for name, res in embedding_metrics(hyps, refs).items():
            if "per_item" in res:
                per_item[name] = np.asarray(res["per_item"], float)
            out[name] = {k: v for k, v in res.items() if k != "per_item"}
    return jsonable(out), per_item


def score_conditions(conditions: dict, references: Sequence[Sequence[str]], meteor=None,
                     embeddings: bool = True) -> tuple[dict, dict]:
    """:func:`score_captions` of every condition against the same references.

    Embedding models that could not be loaded are not retried for the next condition: their
    ``{"skipped": ...}`` entry is copied.

    Parameters
    ----------
    conditions : dict of str to sequence of str
        Condition name -> captions, each of length n.
    references : sequence of sequences of str, length n
    meteor : lib.metrics.captions.MeteorScorer or None
        An open METEOR scorer to share (its start-up takes seconds); one is started for this
        call by default.
    embeddings : bool
        Also compute the sentence-embedding similarities.

    Returns
    -------
    metrics : dict
        Condition -> :func:`score_captions` metrics.
    per_item : dict
        Condition -> metric -> ndarray of shape (n,).
    """
    from lib.metrics import MeteorScorer

    metrics, per_item, skipped = {}, {}, None
    with contextlib.ExitStack() as stack:
        if meteor is None:
            meteor = stack.enter_context(MeteorScorer())
        for name, hyps in conditions.items():
            scores, per_item[name] = score_captions(
                hyps, references, embeddings and skipped is None, meteor=meteor)
            if embeddings and skipped is None:
                emb = {k: v for k, v in scores.items() if k in ("SentenceSim", "CLIP-T")}
                if emb and all("skipped" in v for v in emb.values()):
                    skipped = emb
            elif skipped is not None:
                scores.update(skipped)
            metrics[name] = scores
    return metrics, per_item


def brain_vs_shuffled(per_item: dict, n_permutations: int = 10000, seed: int = 0) -> dict:
    """Paired one-sided permutation test brain > shuffled brain on each per-caption metric.

    Parameters
    ----------
    per_item : dict
        Condition -> metric -> ndarray of shape (n,), with ``brain`` and ``shuffled_brain``
        (:func:`score_conditions`, plus ``ITC-S`` when scored).
    n_permutations, seed : int
        As in :func:`lib.metrics.permutation_test`.

    Returns
    -------
    tests : dict
        Metric (:data:`PERMUTATION_METRICS`, and ``ITC-S`` when present) -> JSON-ready
        :func:`lib.metrics.permutation_test` result.
    """
    from lib.metrics import jsonable, permutation_test

    brain, shuffled = per_item["brain"], per_item["shuffled_brain"]
    return {m: jsonable(permutation_test(brain[m], shuffled[m], n_permutations=n_permutations,
                                         seed=seed))
            for m in (*PERMUTATION_METRICS, "ITC-S") if m in brain}


def itc_image_caption_scores(images: np.ndarray, captions: Sequence[str], itm_model,
                             itm_processor, batch_size: int = 32) -> np.ndarray:
    """BLIP-2 image-text contrastive similarity of each image with its caption (a CLIP-S analogue).

    The ITM checkpoint's image query embeddings (vision encoder -> Q-Former -> vision
    projection, L2-normalised) against the caption's text embedding; the score is the maximum
    cosine over query tokens, as in BLIP-2's ITC.

    Parameters
    ----------
    images : ndarray of shape (n, H, W, 3), uint8
    captions : sequence of str, length n
    itm_model : transformers.Blip2ForImageTextRetrieval
    itm_processor : transformers.Blip2Processor
    batch_size : int

    Returns
    -------
    scores : ndarray of shape (n,)
        Cosine similarity in [-1, 1].
    """
    import torch
    import torch.nn.functional as F

    from lib.decoding.itm import encode_texts
    from lib.features.qformer import image_query_outputs

    device = itm_model.vision_projection.weight.device
    text = encode_texts(itm_model, itm_processor.tokenizer, list(captions)).to(device)
    scores = []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            batch = [np.asarray(im) for im in images[s : s + batch_size]]
            pixels = itm_processor.image_processor(images=batch, return_tensors="pt")
            pixels = pixels["pixel_values"].to(device, itm_model.vision_model.dtype)
            q = image_query_outputs(itm_model, pixels)
            img = F.normalize(itm_model.vision_projection(q.float()), dim=-1)
            t = text[s : s + len(batch)]
            scores.append(torch.einsum("nqd,nd->nq", img, t).amax(dim=1).float().cpu().numpy())
    return np.concatenate(scores) if scores else np.zeros(0)


def write_run_outputs(decoding_dir: str | os.PathLike, run: str, captions: pd.DataFrame,
                      metrics: dict) -> tuple[Path, Path]:
    """Write ``captions_<run>.csv`` and merge the run into ``metrics.json`` (atomically).

    Parameters
    ----------
    decoding_dir : path-like
        ``subjXX/decoding``.
    run : str
    captions : pandas.DataFrame
        One row per test image: ``nsd_id``, ``caption`` (decoded), ``references`` (JSON list)
        and the controls' captions.
    metrics : dict
        JSON-ready metrics of the run.

    Returns
    -------
    captions_path, metrics_path : Path
    """
    from lib.io import atomic_path, write_json

    decoding_dir = Path(decoding_dir)
    captions_path = decoding_dir / f"captions_{run}.csv"
    with atomic_path(captions_path) as tmp:
        captions.to_csv(tmp, index=False)
    metrics_path = decoding_dir / "metrics.json"
    merged = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    merged[run] = metrics
    write_json(metrics_path, merged)
    return captions_path, metrics_path


def metrics_table(metrics: dict, keys: Sequence[str] = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L",
                                                         "CIDEr", "ITC-S")) -> pd.DataFrame:
    """One row per (run, condition) with the caption metrics x100 (the published scale).

    ``ITC-S`` (BLIP-2 image-caption cosine, when computed) is also shown x100, like CLIP-S.

    Parameters
    ----------
    metrics : dict
        Contents of ``metrics.json`` (keyed by run).
    """
    rows = []
    for run, m in metrics.items():
        for cond, scores in m["captions"].items():
            rows.append({"run": run, "condition": cond,
                         **{k: 100 * scores[k] for k in keys if k in scores}})
    return pd.DataFrame(rows)


def metrics_retrieval_table(metrics: dict, key: str = "retrieval") -> pd.DataFrame:
    """One row per (run, condition, direction): top-1, both 95% intervals, chance and options.

    Parameters
    ----------
    metrics : dict
        Contents of ``metrics.json`` (keyed by run).
    key : {"retrieval", "text_retrieval"}
        Image retrieval from query tokens, or brain -> text retrieval (ITC).
    """
    from lib.metrics import retrieval_table as flat

    results = {(run, cond): r for run, m in metrics.items()
               for cond, r in m.get(key, {}).items()}
    return flat(results, key_names=("run", "condition"))


def ratio_to_upper_bound(captions: dict, metrics: Sequence[str] = RATIO_METRICS) -> dict:
    """Each caption metric of the brain captions divided by that of the image upper bound.

    Parameters
    ----------
    captions : dict
        ``metrics["captions"]`` of a run: condition -> metric -> value, with
        ``brain`` and ``image_upper_bound``.

    Returns
    -------
    ratios : dict of str to float
        ``metric -> brain / image_upper_bound`` (NaN when the upper bound is 0; None once
        written to JSON).
    """
    brain, upper = captions["brain"], captions["image_upper_bound"]
    out = {}
    for m in metrics:
        if isinstance(brain.get(m), (int, float)) and isinstance(upper.get(m), (int, float)):
            out[m] = float(brain[m] / upper[m]) if upper[m] else float("nan")
    return out
