"""Evaluation of a decoding run: captions, retrieval, and the controls every number stands next to.

For one run (``decoding/<run>/predictions.h5``) :func:`evaluate_run`

- writes a caption for every test image from its predicted query tokens
  (:func:`lib.decoding.generate.generate_captions`);
- scores them against the COCO references (:func:`lib.metrics.caption_metrics`) and, when the
  models are available, with sentence-embedding similarity
  (:func:`lib.metrics.embedding_similarity`);
- scores the controls on the same metrics:

  * ``shuffled_brain``: the predictions permuted across test images (a derangement with a fixed
    seed), i.e. each image gets the caption decoded from another image's fMRI. Generation is
    deterministic per item (batched = one-at-a-time, tested), so these are the decoded captions
    re-paired, not new generations;
  * ``nearest_train``: the first COCO caption of the training image whose TRUE Q-Former
    embedding is closest (cosine, flattened, centred) to the predicted test embedding;
  * ``image_upper_bound``: BLIP-2 captioning the image itself (the true Q-Former outputs through
    the same language model, which is what BLIP-2's own ``generate`` computes from the pixels;
    tested);
- runs a paired one-sided permutation test of brain vs shuffled brain on per-caption CIDEr
  and METEOR;
- computes k-way top-1 retrieval (brain -> image and image -> brain) on the flattened Q-Former
  embeddings (:func:`lib.metrics.retrieval_topk`: cosine after subtracting the mean true
  embedding of the test images, the candidate set; ``n_draws`` random draws of k test images,
  or the single possible draw when k reaches the number of test images; the options and the
  draws actually made are recorded with the numbers), and the same for the shuffled predictions;
- with an ITM checkpoint, brain -> text retrieval with BLIP-2's image-text contrastive
  similarity (:func:`lib.decoding.itm.brain_text_retrieval`), the criterion stage 2
  trains for;
- reports each caption metric of the brain captions as a fraction of the image upper bound.

Q-Former outputs share a large image-independent component (raw cosines between different
images are close to 1), so the nearest training image is found by the cosine of embeddings
centred on the mean true embedding of the TRAINING images.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lib.decoding.stage1 import cosine_matrix, lookup_features, read_predictions

#: Centring of every image retrieval of a decoding run (05 and the memory ablation alike).
RETRIEVAL_CENTER = "candidates"

#: Retrieval rules: the book's (centred, each image's prediction averaged over its repeats) and
#: the original study's (uncentred cosine, one random test trial per image).
RETRIEVAL_RULES = {
    "book": {"center": "candidates", "trials": "averaged"},
    "paper": {"center": "none", "trials": "one_random"},
}

#: Caption metrics reported as a fraction of the image upper bound.
RATIO_METRICS = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "ITC-S")

#: Caption metrics with per-caption scores used by the permutation test.
PERMUTATION_METRICS = ("CIDEr", "METEOR")

SHUFFLE_DESCRIPTION = (
    "predictions permuted across test images (fixed-seed derangement): each image is paired with "
    "the caption decoded from another test image's fMRI"
)


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


def text_retrieval(run_dir: str | os.PathLike, test_pred: np.ndarray,
                   references: Sequence[Sequence[str]], perm: np.ndarray, itm_model,
                   itm_processor, k: int = 300, n_draws: int = 30, seed: int = 0,
                   max_length: int = 32) -> dict:
    """Brain -> text retrieval with BLIP-2's ITC similarity: the criterion stage 2 trains for.

    One reference caption per test image is drawn (:func:`lib.decoding.itm.pick_captions`,
    seeded: the same captions for every run) and embedded by the ITM text path. The predicted
    query tokens are scored through the ITM ``vision_projection`` (the image head: the same for
    every run, so stage 1 and stage 2 are compared in one space) and, for a stage-2 run, also
    through its own trained brain projection (``heads.safetensors``).

    Parameters
    ----------
    run_dir : path-like
        The run's folder (a stage-2 run holds ``heads.safetensors``).
    test_pred : ndarray of shape (n_test, n_query, hidden)
    references : sequence of sequences of str, length n_test
    perm : ndarray of shape (n_test,)
        The shuffled-brain derangement.
    itm_model, itm_processor
        From :func:`lib.decoding.itm.load_itm`.
    k, n_draws, seed, max_length
        Retrieval settings and caption length.

    Returns
    -------
    results : dict
        ``brain`` and ``shuffled_brain`` through the ITM head, and with a trained head
        ``brain_own_head`` and ``shuffled_brain_own_head``; each a
        :func:`lib.metrics.retrieval_from_similarity` result (directions ``brain_to_text`` and
        ``text_to_brain``, per-item scores included).
    """
    from lib.decoding.checkpoints import load_heads
    from lib.decoding.itm import brain_text_retrieval, encode_texts, pick_captions

    captions = pick_captions(references, seed=seed)
    text = encode_texts(itm_model, itm_processor.tokenizer, captions, max_length)
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
    from lib.decoding.stage1 import load_decoder, stage1_inputs

    decoder = load_decoder(run_dir, device=device)
    s = decoder.settings
    blocks, ids = stage1_inputs(subject, "test", int(s["memory_size"]),
                                s.get("memory_direction", "past"), s.get("roi"), trials=True)
    rng = np.random.default_rng(seed)
    uniq = np.unique(ids)
    pick = np.array([rng.choice(np.flatnonzero(ids == u)) for u in uniq])
    return decoder.predict([b[pick] for b in blocks]), uniq


def compare_runs(metrics_a: dict, metrics_b: dict, condition_a: str = "brain",
                 condition_b: str = "brain", key: str = "text_retrieval",
                 direction: str = "brain_to_text", n_boot: int = 10000,
                 n_permutations: int = 10000, seed: int = 0) -> dict:
    """Paired comparison of two runs' retrieval on the same test images (a better than b?).

    Each test image's retrieval score (its hit rate over the draws that held it) in run a
    minus that in run b: mean difference with a percentile bootstrap 95% interval over test
    images, and the one-sided paired permutation p-value of a > b.

    Parameters
    ----------
    metrics_a, metrics_b : dict
        :attr:`RunEvaluation.metrics` of the two runs (same test images).
    condition_a, condition_b : str
        Entries of ``metrics[key]`` to compare (e.g. ``"brain_own_head"`` vs ``"brain"``).
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


@dataclass
class RunEvaluation:
    """What :func:`evaluate_run` returns.

    Attributes
    ----------
    captions : pandas.DataFrame
        One row per test image: ``nsd_id``, ``caption`` (decoded), ``references`` (JSON list),
        ``shuffled_brain``, ``nearest_train``, ``nearest_train_id``, ``image_upper_bound``.
    metrics : dict
        JSON-ready summary (see the module docstring).
    per_item : dict
        ``{condition: {metric: ndarray of shape (n_test,)}}``.
    """

    captions: pd.DataFrame
    metrics: dict
    per_item: dict


def evaluate_run(run_dir: str | os.PathLike, subject, model, processor, features: np.ndarray,
                 feature_ids: np.ndarray, upper_bound: dict | None = None,
                 prompt: str | None = None, num_beams: int = 1, batch_size: int = 16,
                 max_new_tokens: int = 30, k: int = 300, n_draws: int = 30, seed: int = 0,
                 n_permutations: int = 10000, embeddings: bool = True,
                 meteor=None, itm=None, text_k: int | None = None,
                 text_n_draws: int | None = None, text_max_length: int = 32,
                 retrieval_rule: str = "book") -> RunEvaluation:
    """Captions, metrics, retrieval and controls for one decoding run.

    Parameters
    ----------
    run_dir : path-like
        ``decoding/<run>/`` holding ``predictions.h5``.
    subject : lib.nsd.PreparedSubject
        For captions (references) and the training image list.
    model, processor
        From :func:`lib.decoding.generate.load_captioner`.
    features : ndarray of shape (n_images, n_query, hidden)
        True Q-Former outputs of the subject's images, from the same checkpoint.
    feature_ids : ndarray of shape (n_images,)
    upper_bound : dict of int to str or None
        BLIP-2's captions of the test images keyed by nsd id, computed once and shared
        between runs; computed here when None.
    prompt, num_beams, batch_size, max_new_tokens
        Generation settings (:func:`lib.decoding.generate.generate_captions`).
    k, n_draws : int
        k-way retrieval (k capped at the number of test images) over ``n_draws`` draws.
    seed : int
        Seed of the shuffle, the retrieval draws and the permutation test.
    n_permutations : int
        Permutations of the brain-vs-shuffled test.
    embeddings : bool
        Also compute sentence-embedding similarities (skipped when the model is unavailable).
    meteor : lib.metrics.captions.MeteorScorer or None
        An open METEOR scorer to share between runs (its start-up takes seconds); one is
        started for this call by default.
    itm : tuple (Blip2ForImageTextRetrieval, Blip2Processor) or None
        When given, every condition also gets ``ITC-S``, the BLIP-2 image-text contrastive
        similarity of the test image with the caption (:func:`itc_image_caption_scores`),
        and the permutation test covers it too; and ``text_retrieval`` is computed
        (:func:`text_retrieval`).
    text_k, text_n_draws : int or None
        k and draws of the brain -> text retrieval (default: ``k`` and ``n_draws``).
    text_max_length : int
        Caption tokens for the ITM text embeddings (as in stage 2's training).
    retrieval_rule : {"book", "paper"}
        Image retrieval rule (:data:`RETRIEVAL_RULES`): centred cosine of repeat-averaged
        predictions (the book), or the original study's uncentred cosine of the prediction of
        one random test trial per image (:func:`single_trial_predictions`).

    Returns
    -------
    evaluation : RunEvaluation
    """
    from lib.decoding.generate import generate_captions
    from lib.metrics import jsonable, permutation_test, retrieval_topk

    preds = read_predictions(run_dir)
    test_pred, test_ids = preds["test_pred"], preds["test_ids"]
    test_true = lookup_features(features, feature_ids, test_ids)
    train_ids = np.asarray(subject.image_ids("train"))
    assert np.intersect1d(train_ids, test_ids).size == 0, "test images among training images"
    train_true = lookup_features(features, feature_ids, train_ids)
    references = subject.captions(test_ids)

    gen = {"prompt": prompt, "num_beams": num_beams, "batch_size": batch_size,
           "max_new_tokens": max_new_tokens}
    brain = generate_captions(test_pred, model, processor, **gen)
    if upper_bound is None:
        upper_bound = generate_captions(test_true, model, processor, **gen)
    else:
        missing = [int(i) for i in test_ids if int(i) not in upper_bound]
        if missing:
            raise KeyError(f"upper_bound has no caption for test images {missing[:5]}")
        upper_bound = [upper_bound[int(i)] for i in test_ids]
    perm = derangement(len(test_ids), seed)
    shuffled = [brain[j] for j in perm]
    # Q-Former outputs share a large image-independent component: similarities are computed on
    # embeddings centred on the mean TRAINING embedding (training data only)
    mean = train_true.mean(axis=0)
    near_idx, near_sim = nearest_train(test_pred - mean, train_true - mean)
    near_ids = train_ids[near_idx]
    nearest = [caps[0] for caps in subject.captions(near_ids)]

    conditions = {"brain": brain, "shuffled_brain": shuffled, "nearest_train": nearest,
                  "image_upper_bound": list(upper_bound)}
    metrics: dict = {"n_test": len(test_ids), "shuffled_brain": SHUFFLE_DESCRIPTION,
                     "nearest_train": "first COCO caption of the training image with the "
                                      "nearest true Q-Former embedding (cosine) to the prediction",
                     "image_upper_bound": "BLIP-2 captioning the test image itself",
                     "generation": {**gen, "prompt": prompt or ""}, "captions": {}}
    per_item: dict = {}
    from lib.metrics.captions import MeteorScorer

    images = subject.images(test_ids) if itm is not None else None

    skipped = None  # embedding models that could not be loaded are not retried per condition
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
            if itm is not None:
                per_item[name]["ITC-S"] = itc_image_caption_scores(images, hyps, *itm)
                scores["ITC-S"] = float(per_item[name]["ITC-S"].mean())
            metrics["captions"][name] = scores

    metrics["permutation_brain_vs_shuffled"] = {
        m: jsonable(permutation_test(per_item["brain"][m], per_item["shuffled_brain"][m],
                                      n_permutations=n_permutations, seed=seed))
        for m in (*PERMUTATION_METRICS, "ITC-S") if m in per_item["brain"]
    }
    # predictions.h5 holds one prediction per test image: from its repetition-averaged betas
    # (memory 1) or averaged over its trials' predictions (memory > 1)
    if retrieval_rule not in RETRIEVAL_RULES:
        raise ValueError(f"retrieval_rule={retrieval_rule!r}; expected one of "
                         f"{sorted(RETRIEVAL_RULES)}")
    rule = RETRIEVAL_RULES[retrieval_rule]
    ret = {"k": k, "n_draws": n_draws, "seed": seed, "repeat_averaged": True,
           "center": rule["center"]}
    if rule["trials"] == "one_random":
        test_pred, trial_ids = single_trial_predictions(run_dir, subject, seed)
        assert np.array_equal(trial_ids, test_ids)
        ret["repeat_averaged"] = False
    metrics["retrieval"] = {
        "brain": jsonable(retrieval_topk(test_pred, test_true, **ret)),
        "shuffled_brain": jsonable(retrieval_topk(test_pred[perm], test_true, **ret)),
    }
    metrics["ratio_to_image_upper_bound"] = jsonable(ratio_to_upper_bound(metrics["captions"]))
    if itm is not None:
        metrics["text_retrieval"] = jsonable(text_retrieval(
            run_dir, test_pred, references, perm, *itm, k=k if text_k is None else text_k,
            n_draws=n_draws if text_n_draws is None else text_n_draws, seed=seed,
            max_length=text_max_length))
    metrics["nearest_train_cosine_mean"] = float(near_sim.mean())

    frame = pd.DataFrame({
        "nsd_id": test_ids.astype(np.int64),
        "caption": brain,
        "references": [json.dumps(list(r)) for r in references],
        "shuffled_brain": shuffled,
        "nearest_train": nearest,
        "nearest_train_id": near_ids.astype(np.int64),
        "image_upper_bound": list(upper_bound),
    })
    return RunEvaluation(captions=frame, metrics=metrics, per_item=per_item)


def write_run_outputs(decoding_dir: str | os.PathLike, run: str,
                      evaluation: RunEvaluation) -> tuple[Path, Path]:
    """Write ``captions_<run>.csv`` and merge the run into ``metrics.json`` (atomically).

    Returns
    -------
    captions_path, metrics_path : Path
    """
    from lib.io import atomic_path, write_json

    decoding_dir = Path(decoding_dir)
    captions_path = decoding_dir / f"captions_{run}.csv"
    with atomic_path(captions_path) as tmp:
        evaluation.captions.to_csv(tmp, index=False)
    metrics_path = decoding_dir / "metrics.json"
    merged = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    merged[run] = evaluation.metrics
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
        ``metrics["captions"]`` of :func:`evaluate_run`: condition -> metric -> value, with
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
