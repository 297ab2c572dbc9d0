"""Retrieval of a decoding run: image retrieval under a rule, brain -> text retrieval, run pairs.

- :func:`retrieval_options` and :func:`single_trial_predictions`: k-way top-1 image retrieval
  from the predicted query tokens (:func:`lib.metrics.retrieval_topk`) under the book's rule or
  the original study's (:data:`RETRIEVAL_RULES`);
- :func:`caption_embeddings` and :func:`text_retrieval`: brain -> text retrieval with BLIP-2's
  image-text contrastive similarity (:func:`lib.decoding.itm.brain_text_retrieval`),
  the criterion stage 2 trains for;
- :func:`compare_runs`: two runs' retrieval paired over test images (stage 2 vs stage 1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Centring of every image retrieval of a decoding run (05 and the memory ablation alike).
RETRIEVAL_CENTER = "candidates"

#: Retrieval rules: the book's (centred, each image's prediction averaged over its repeats) and
#: the original study's (uncentred cosine, one random test trial per image).
RETRIEVAL_RULES = {
    "book": {"center": "candidates", "trials": "averaged"},
    "paper": {"center": "none", "trials": "one_random"},
}


def retrieval_options(rule: str = "book", k: int = 300, n_draws: int = 30,
                      seed: int = 0) -> dict:
    """Keyword arguments of :func:`lib.metrics.retrieval_topk` under a retrieval rule.

    Parameters
    ----------
    rule : {"book", "paper"}
        :data:`RETRIEVAL_RULES`: centred cosine of repeat-averaged predictions (the book), or
        the original study's uncentred cosine of the prediction of one random test trial per
        image (:func:`single_trial_predictions`; ``repeat_averaged`` is then False).
    k, n_draws, seed : int

    Returns
    -------
    options : dict
        ``k``, ``n_draws``, ``seed``, ``repeat_averaged``, ``center``.
    """
    if rule not in RETRIEVAL_RULES:
        raise ValueError(f"retrieval_rule={rule!r}; expected one of {sorted(RETRIEVAL_RULES)}")
    return {"k": k, "n_draws": n_draws, "seed": seed,
            "repeat_averaged": RETRIEVAL_RULES[rule]["trials"] == "averaged",
            "center": RETRIEVAL_RULES[rule]["center"]}


def single_trial_predictions(run_dir: str | os.PathLike, subject, seed: int = 0,
                             device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """The run's decoder applied to one random test trial of every test image.

    The original study's retrieval rule: one trial (drawn with ``seed``), not the average of an
    image's repeats. The decoder's own inputs are used (memory window, direction, ROI).

    Returns
    -------
    pred : ndarray of shape (n_test_images, n_query, hidden)
    nsd_ids : ndarray of shape (n_test_images,), sorted
    """
    from lib.decoding.decoder import load_decoder
    from lib.decoding.stage1 import stage1_inputs

    decoder = load_decoder(run_dir, device=device)
    s = decoder.settings
    blocks, ids = stage1_inputs(subject, "test", int(s["memory_size"]),
                                s.get("memory_direction", "past"), s.get("roi"), trials=True)
    rng = np.random.default_rng(seed)
    uniq = np.unique(ids)
    pick = np.array([rng.choice(np.flatnonzero(ids == u)) for u in uniq])
    return decoder.predict([b[pick] for b in blocks]), uniq


def caption_embeddings(references: Sequence[Sequence[str]], itm, seed: int = 0,
                       max_length: int = 32):
    """ITM text embeddings of one reference caption per test image, drawn with ``seed``.

    The draw (:func:`lib.decoding.itm.pick_captions`) depends only on the references
    and the seed: every run is scored against the same captions.

    Parameters
    ----------
    references : sequence of sequences of str, length n_test
    itm : tuple (Blip2ForImageTextRetrieval, Blip2Processor)
        From :func:`lib.decoding.itm.load_itm`.
    seed : int
    max_length : int
        Caption tokens (as in stage 2's training).

    Returns
    -------
    text : Tensor of shape (n_test, dim)
        Normalised, on CPU.
    """
    from lib.decoding.itm import encode_texts, pick_captions

    itm_model, itm_processor = itm
    captions = pick_captions(references, seed=seed)
    return encode_texts(itm_model, itm_processor.tokenizer, captions, max_length)


def text_retrieval(run_dir: str | os.PathLike, test_pred: np.ndarray, text, perm: np.ndarray,
                   itm_model, k: int = 300, n_draws: int = 30, seed: int = 0) -> dict:
    """Brain -> text retrieval with BLIP-2's ITC similarity: the criterion stage 2 trains for.

    The predicted query tokens are scored through the ITM ``vision_projection`` (the image
    head: the same for every run, so stage 1 and stage 2 are compared in one space) and, for a
    stage-2 run, also through its own trained brain projection (``heads.safetensors``).

    Parameters
    ----------
    run_dir : path-like
        The run's folder (a stage-2 run holds ``heads.safetensors``).
    test_pred : ndarray of shape (n_test, n_query, hidden)
    text : Tensor of shape (n_test, dim)
        :func:`caption_embeddings`, row-aligned with ``test_pred``.
    perm : ndarray of shape (n_test,)
        The shuffled-brain derangement.
    itm_model : transformers.Blip2ForImageTextRetrieval
    k, n_draws, seed : int
        k-way retrieval over ``n_draws`` draws (repeat-averaged predictions).

    Returns
    -------
    results : dict
        ``brain`` and ``shuffled_brain`` through the ITM head, and with a trained head
        ``brain_own_head`` and ``shuffled_brain_own_head``; each a
        :func:`lib.metrics.retrieval_from_similarity` result (directions ``brain_to_text`` and
        ``text_to_brain``, per-item scores included).
    """
    from lib.decoding.checkpoints import load_heads
    from lib.decoding.itm import brain_text_retrieval

    kw = {"k": k, "n_draws": n_draws, "seed": seed, "repeat_averaged": True}
    heads = {"": itm_model.vision_projection}
    head_file = Path(run_dir) / "heads.safetensors"
    if head_file.exists():
        proj, _ = load_heads(head_file)
        heads["_own_head"] = proj.to(itm_model.vision_projection.weight.device)
    out = {}
    for suffix, head in heads.items():
        out[f"brain{suffix}"] = brain_text_retrieval(test_pred, text, head, **kw)
        out[f"shuffled_brain{suffix}"] = brain_text_retrieval(test_pred[perm], text, head, **kw)
    return out


def compare_runs(metrics_a: dict, metrics_b: dict, conditions: tuple[str, str] = ("brain", "brain"),
                 key: str = "text_retrieval", direction: str = "brain_to_text",
                 n_boot: int = 10000, n_permutations: int = 10000, seed: int = 0) -> dict:
    """Paired comparison of two runs' retrieval on the same test images (a better than b?).

    Each test image's retrieval score (its hit rate over the draws that held it) in run a
    minus that in run b: mean difference with a percentile bootstrap 95% interval over test
    images, and the one-sided paired permutation p-value of a > b.

    Parameters
    ----------
    metrics_a, metrics_b : dict
        ``metrics.json`` entries of the two runs (same test images).
    conditions : pair of str
        Entries of ``metrics_a[key]`` and ``metrics_b[key]`` to compare (e.g.
        ``("brain_own_head", "brain")``).
    key : {"text_retrieval", "retrieval"}
    direction : str
        ``"brain_to_text"`` (``text_retrieval``) or ``"brain_to_image"`` (``retrieval``).
    n_boot, n_permutations, seed : int

    Returns
    -------
    comparison : dict
        ``criterion`` (a sentence), ``top1_a``, ``top1_b``, ``difference`` (mean over test
        images of a - b), ``ci95`` ([low, high], bootstrap), ``p_value`` (a > b), ``k``,
        ``n_items``, ``n_draws``.
    """
    from lib.metrics import bootstrap_ci, permutation_test

    condition_a, condition_b = conditions
    ra, rb = metrics_a[key][condition_a], metrics_b[key][condition_b]
    if ra["n_items"] != rb["n_items"] or ra["k"] != rb["k"]:
        raise ValueError("the two runs were not scored on the same test images with the same k")
    a = np.array([np.nan if v is None else v for v in ra[direction]["per_item"]], float)
    b = np.array([np.nan if v is None else v for v in rb[direction]["per_item"]], float)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    boot = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    perm = permutation_test(a[ok], b[ok], n_permutations=n_permutations, seed=seed)
    return {"criterion": f"{key} {direction} top-1 ({condition_a} vs {condition_b}), paired "
                         "over test images",
            "top1_a": ra[direction]["mean"], "top1_b": rb[direction]["mean"],
            "difference": float(d.mean()), "ci95": [boot["low"], boot["high"]],
            "p_value": perm["p_value"], "k": ra["k"], "n_items": int(ok.sum()),
            "n_draws": ra["n_draws"]}
