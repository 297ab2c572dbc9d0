"""Quality of the toy BLIP-2 pair from pixels on held-out scenes.

:func:`evaluate_from_pixels`: BLEU/CIDEr of the captioner's greedy captions against each
image's five references, and image -> text retrieval with the retrieval model's ITC similarity
(:func:`retrieval_top1`; and against all captions of the held-out images).
"""

from __future__ import annotations

import numpy as np


def caption_pixels(model, processor, images: np.ndarray, batch_size: int = 100,
                   max_new_tokens: int = 32) -> list[str]:
    """Greedy captions from pixels, through ``model.generate`` as for the real checkpoint.

    (:func:`lib.decoding.generate_captions` captions query tokens, such as those decoded from
    the brain, instead of pixels.)

    ``max_new_tokens`` is passed explicitly: ``Blip2ForConditionalGeneration.generate``
    hands over to the inner language model's generation defaults (20 new tokens).
    """
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            inputs = processor(images=list(images[i : i + batch_size]), return_tensors="pt")
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 num_beams=1)
            out += [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
    return out


def bleu_cider(hypotheses: list[str], references: list[list[str]]) -> dict:
    """BLEU-1..4 and CIDEr with pycocoevalcap (simple lower-case word tokenisation)."""
    import re

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    def tok(s):
        return " ".join(re.findall(r"[a-z0-9]+", s.lower()))

    gts = {i: [tok(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [tok(h)] for i, h in enumerate(hypotheses)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    out = {f"BLEU-{k + 1}": float(b) for k, b in enumerate(bleu)}
    out["CIDEr"] = float(cider)
    return out


def itc_logits_from_pixels(itm_model, processor, images: np.ndarray, texts: list[str]
                           ) -> np.ndarray:
    """The ITM model's image-text contrastive logits (n_images, n_texts) from pixels, as
    :class:`~transformers.Blip2ForImageTextRetrieval` computes them without its ITM head."""
    import torch

    with torch.inference_mode():
        inputs = processor(images=list(images), text=list(texts), padding=True,
                           return_tensors="pt")
        return itm_model(**inputs, use_image_text_matching_head=False).logits_per_image.numpy()


def retrieval_top1(itm_model, processor, images: np.ndarray, texts: list[str]) -> dict:
    """Image -> text and text -> image top-1 accuracy with the ITM model's ITC similarity.

    ``texts[i]`` is the caption of ``images[i]``; all images in one draw
    (:func:`lib.metrics.retrieval_from_similarity`, strict ties), chance ``1 / len(images)``.
    """
    from lib.metrics import retrieval_from_similarity

    sim = itc_logits_from_pixels(itm_model, processor, images, texts)
    n = len(images)
    ret = retrieval_from_similarity(sim, k=n, n_draws=1, repeat_averaged=None,
                                    directions=("image_to_text", "text_to_image"),
                                    similarity="BLIP-2 ITC logits")
    return {
        "image_to_text_top1": ret["image_to_text"]["mean"],
        "text_to_image_top1": ret["text_to_image"]["mean"],
        "chance": ret["chance"],
        "n": n,
    }


def evaluate_from_pixels(itm_model, opt_model, processor, corpus, n_examples: int = 8) -> dict:
    """Quality from pixels on held-out scenes (see the module docstring)."""
    hyps = caption_pixels(opt_model, processor, corpus.images)
    scores = bleu_cider(hyps, corpus.captions)
    scores.update(retrieval_top1(itm_model, processor, corpus.images,
                                 [c[0] for c in corpus.captions]))
    # image -> caption among all captions of the held-out images (any of its own counts)
    from lib.metrics import retrieval_from_similarity

    flat = [c for caps in corpus.captions for c in caps]
    owner = np.repeat(np.arange(len(corpus)), [len(c) for c in corpus.captions])
    sim = itc_logits_from_pixels(itm_model, processor, corpus.images, flat)
    # an image's best caption against every other image's best: one k-way retrieval, all images
    best = np.stack([sim[:, owner == j].max(axis=1) for j in range(len(corpus))], axis=1)
    ret = retrieval_from_similarity(best, k=len(corpus), n_draws=1, repeat_averaged=None,
                                    similarity="BLIP-2 ITC logits, max over each image's captions")
    scores["image_to_any_caption_top1"] = ret["forward"]["mean"]
    scores["image_to_any_caption_chance"] = ret["chance"]
    scores["examples"] = [
        {"caption": h, "references": r} for h, r in zip(hyps[:n_examples], corpus.captions)
    ]
    scores["n_images"] = len(corpus)
    return scores
