"""Toy BLIP-2: an image-text retrieval model (stage 1) and a captioner (stage 2).

Both are the standard Hugging Face classes, so every later stage loads them exactly like the
real checkpoints (``Salesforce/blip2-itm-vit-g``, ``Salesforce/blip2-opt-2.7b``):

- :func:`train_blip2` pre-trains a small ViT on the scene labels and freezes it (BLIP-2's
  frozen image encoder), then trains the Q-Former side of a
  :class:`~transformers.Blip2ForImageTextRetrieval` (a few query tokens, text input) with the
  image-text contrastive loss (the maximum over query tokens of the cosine between projected
  query outputs and the projected text ``[BOS]`` token) plus a captioning loss through a small
  OPT, then builds the :class:`~transformers.Blip2ForConditionalGeneration` whose vision
  encoder, Q-Former and query tokens are frozen copies of the retrieval model's (as BLIP-2's
  stage 2 starts from stage 1) and trains its language projection and OPT to caption the scenes.

:mod:`lib.toyworld.models.blip2_quality` scores both from pixels on held-out scenes.

Size: over the ~400-line aim (about 465): BLIP-2's three training steps share the configs, the
caption encoding and the losses' helpers of this module; apart, each would import the others'.
"""

from __future__ import annotations

import numpy as np

from lib.features.qformer import query_outputs as qformer_query_outputs

from ..timing import PhaseTimes
from ._train import (
    pad_sequences,
    seeded_init,
    train_epochs,
)

#: Seed streams for weight initialisation (distinct from the data streams).
_INIT_ITM, _INIT_OPT = 11, 12


# --------------------------------------------------------------------------- configs
def make_processor(tokenizer, image_size: int, num_query_tokens: int):
    """A :class:`~transformers.Blip2Processor` (BLIP image processor + word-level tokenizer).

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerFast
        From :func:`lib.toyworld.models.tokenizer.build_tokenizer` (holds ``<image>``).
    image_size : int
        Images are resized to ``(image_size, image_size)`` and normalised with CLIP's
        mean and standard deviation, as the real BLIP-2 processor does.
    num_query_tokens : int
        Number of ``<image>`` placeholders the processor puts before the text.
    """
    from transformers import Blip2Processor

    try:  # without torchvision, the PIL backend is what BlipImageProcessor resolves to
        from transformers.models.blip.image_processing_pil_blip import (
            BlipImageProcessorPil as _ImageProcessor,
        )
    except ImportError:  # pragma: no cover - older transformers
        from transformers import BlipImageProcessor as _ImageProcessor

    image_processor = _ImageProcessor(size={"height": int(image_size), "width": int(image_size)})
    return Blip2Processor(
        image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=int(num_query_tokens)
    )


def blip2_config(tokenizer, spec: dict, image_size: int):
    """Blip2Config for the toy models from a preset's ``blip2`` section.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerFast
    spec : dict
        Keys ``vision_hidden``, ``vision_layers``, ``patch_size``, ``qformer_hidden``,
        ``qformer_layers``, ``num_query_tokens``, ``embed_dim``, ``lm_hidden``, ``lm_layers``.
    image_size : int
    """
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, OPTConfig

    vocab = len(tokenizer)
    vh, qh, lh = spec["vision_hidden"], spec["qformer_hidden"], spec["lm_hidden"]
    vision = Blip2VisionConfig(
        hidden_size=vh, intermediate_size=4 * vh, num_hidden_layers=spec["vision_layers"],
        num_attention_heads=max(vh // 32, 1), image_size=int(image_size),
        patch_size=spec["patch_size"], layer_norm_eps=1e-6, attention_dropout=0.0,
    )
    qformer = Blip2QFormerConfig(
        vocab_size=vocab, hidden_size=qh, num_hidden_layers=spec["qformer_layers"],
        num_attention_heads=max(qh // 32, 1), intermediate_size=4 * qh,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64,
        cross_attention_frequency=1, encoder_hidden_size=vh, pad_token_id=tokenizer.pad_token_id,
        use_qformer_text_input=True,
    )
    text = OPTConfig(
        vocab_size=vocab, hidden_size=lh, num_hidden_layers=spec["lm_layers"], ffn_dim=4 * lh,
        num_attention_heads=max(lh // 32, 1), max_position_embeddings=128, word_embed_proj_dim=lh,
        dropout=0.0, attention_dropout=0.0, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    return Blip2Config(
        vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=spec["num_query_tokens"],
        image_text_hidden_size=spec["embed_dim"],
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=True,
    )


# --------------------------------------------------------------------------- data helpers
def pixel_values(processor, images: np.ndarray, batch_size: int = 512):
    """Run the processor's image half on ``images`` (n, H, W, 3) uint8 -> (n, 3, S, S) float32."""
    import torch

    out = [
        processor.image_processor(list(images[i : i + batch_size]), return_tensors="pt")[
            "pixel_values"
        ]
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).float()


def encode_captions(tokenizer, captions: list, num_query_tokens: int, image_token_id: int,
                    add_eos: bool):
    """Token ids of every caption, with the processor's layout (image tokens, BOS, words).

    Returns
    -------
    ids : LongTensor of shape (n_images, n_captions, max_len)
        Right-padded with ``pad_token_id``.
    mask : LongTensor of the same shape
    """

    flat = [c for caps in captions for c in caps]
    enc = tokenizer(flat, add_special_tokens=True)["input_ids"]
    prefix = [image_token_id] * num_query_tokens
    seqs = [prefix + e + ([tokenizer.eos_token_id] if add_eos else []) for e in enc]
    ids, mask = pad_sequences(seqs, tokenizer.pad_token_id)
    n_caps, length = len(captions[0]), ids.shape[1]
    return ids.view(len(captions), n_caps, length), mask.view(len(captions), n_caps, length)


def _trim(ids, mask):
    """Drop all-padding columns at the right of a batch."""
    keep = int(mask.sum(1).max())
    return ids[:, :keep], mask[:, :keep]


# --------------------------------------------------------------------------- stage 1
def itc_logits(itm_model, queries, ids, mask):
    """The ITM model's contrastive similarity from precomputed Q-Former query outputs.

    Same computation as ``Blip2ForImageTextRetrieval.forward(...,
    use_image_text_matching_head=False).logits_per_image`` after its vision half, so one
    vision pass can serve the contrastive and the captioning losses.

    Parameters
    ----------
    queries : FloatTensor of shape (B_img, num_query_tokens, qformer_hidden)
    ids, mask : LongTensor of shape (B_txt, L)
        Processor layout (image tokens first; they are dropped as the model does).

    Returns
    -------
    sim : FloatTensor of shape (B_img, B_txt)
    image_embeds : FloatTensor of shape (B_img, num_query_tokens, embed_dim)
    """
    import torch.nn.functional as F

    from lib.decoding.itm import itc_similarity

    nq = itm_model.config.num_query_tokens
    image_embeds = F.normalize(itm_model.vision_projection(queries), dim=-1)
    text_in = itm_model.embeddings(input_ids=ids[:, nq:])
    text = itm_model.qformer(query_embeds=text_in, query_length=0,
                             attention_mask=mask[:, nq:]).last_hidden_state
    text_embeds = F.normalize(itm_model.text_projection(text[:, 0, :]), dim=-1)
    return itc_similarity(image_embeds, text_embeds), image_embeds


def pretrain_vision(vision_model, pixels, labels, spec: dict, seed: int) -> dict:
    """Supervised pre-training of the BLIP-2 image encoder on the scene labels.

    BLIP-2 starts from an image encoder pre-trained elsewhere (EVA-CLIP's ViT-g) and keeps it
    frozen; the toy analogue is a small ViT trained to tell which places, objects, colours and
    object-colour pairs (and where) are in a scene. A linear head on the concatenated ``[CLS]``
    output and the mean patch token is trained jointly with binary cross-entropy and discarded.

    Parameters
    ----------
    vision_model : Blip2VisionModel
        Trained in place.
    pixels : FloatTensor of shape (n, 3, S, S)
    labels : FloatTensor of shape (n, n_labels)
        Multi-hot scene labels (:func:`lib.toyworld.models.data.scene_labels`).
    spec : dict
        ``vision_pretrain_epochs``, ``vision_pretrain_batch``, ``vision_pretrain_lr``.
    seed : int

    Returns
    -------
    history : dict
        ``loss`` per step and ``seconds``.
    """
    import torch
    import torch.nn.functional as F

    epochs = int(spec.get("vision_pretrain_epochs") or 0)
    if epochs == 0:
        return {"loss": [], "seconds": 0.0}
    hidden = vision_model.config.hidden_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) * 7919 + 23)
        head = torch.nn.Linear(2 * hidden, labels.shape[1])

    def step_loss(idx):
        out = vision_model(pixel_values=pixels[idx])
        pooled = torch.cat([out.pooler_output, out.last_hidden_state[:, 1:].mean(1)], dim=1)
        return F.binary_cross_entropy_with_logits(head(pooled), labels[idx])

    rng = np.random.default_rng([int(seed), 2000])
    vision_model.train()
    history = train_epochs(step_loss, [*vision_model.parameters(), *head.parameters()],
                           len(pixels), spec["vision_pretrain_batch"], epochs,
                           float(spec["vision_pretrain_lr"]), rng, "blip2 vision encoder",
                           weight_decay=0.05)
    vision_model.eval()
    return history


def image_encoder_outputs(vision_model, pixels, batch_size: int = 256):
    """Last hidden states (n, 1 + n_patches, vision_hidden) of a frozen image encoder."""
    import torch

    with torch.inference_mode():
        out = [vision_model(pixel_values=pixels[i : i + batch_size]).last_hidden_state
               for i in range(0, len(pixels), batch_size)]
    return torch.cat(out).clone()


def train_blip2(corpus, processor, spec: dict, image_size: int, seed: int, phases=None):
    """Train the toy BLIP-2 pair: a retrieval model and a captioner sharing one vision side.

    As BLIP-2, in three steps:

    0. **Image encoder.** The ViT is pre-trained on the scene labels
       (:func:`pretrain_vision`), then frozen.
    1. **Q-Former.** The Q-Former, query tokens and projections (held by the
       ``Blip2ForImageTextRetrieval``) learn from the frozen encoder's outputs with the
       image-text contrastive loss (symmetric InfoNCE on the model's own similarity) plus an
       image-grounded captioning loss through the captioner's language projection and OPT
       (BLIP-2's stage 1 also trains an image-grounded generation loss). Optionally
       (``spec["itm_aux"]`` > 0) a linear probe from the query embeddings to the scene labels
       adds a supervised signal; the probe is discarded.
    2. **Captioner.** The ``Blip2ForConditionalGeneration`` gets copies of the vision encoder,
       Q-Former and query tokens, frozen; its language projection and OPT keep training on
       cached query outputs (``opt_epochs``).

    ``phases`` (a :class:`lib.toyworld.timing.PhaseTimes`, optional) records the wall and CPU
    time of the three steps.

    Returns
    -------
    itm : Blip2ForImageTextRetrieval
    opt : Blip2ForConditionalGeneration
        Separate models (no shared tensors) in eval mode; their vision encoders, Q-Formers
        and query tokens are equal.
    history : dict
        ``vision_loss`` (step 0), ``itm_loss``, ``lm_loss`` (step 1 per step), ``opt_loss``
        (step 2).
    """
    import torch
    from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval

    tok = processor.tokenizer
    config = blip2_config(tok, spec, image_size)
    itm = seeded_init(Blip2ForImageTextRetrieval, config, seed, _INIT_ITM)
    opt = seeded_init(Blip2ForConditionalGeneration, config, seed, _INIT_OPT)
    phases = phases if phases is not None else PhaseTimes(prefix=None)
    labels = torch.from_numpy(corpus.labels)
    with phases.phase("blip2/image encoder (pixels, pre-training, encoding)"):
        pixels = pixel_values(processor, corpus.images)
        hist0 = pretrain_vision(itm.vision_model, pixels, labels, spec, seed)
        itm.vision_model.requires_grad_(False)
        encoded = image_encoder_outputs(itm.vision_model, pixels)
        del pixels
    history = {"vision_loss": hist0["loss"],
               **_train_qformer(itm, opt, encoded, corpus.captions, labels, tok, spec, seed,
                                phases)}
    _copy_vision_side(itm, opt)
    with phases.phase("blip2/OPT stage 2 (language side)"):
        opt, hist2 = _train_language_side(opt, encoded, corpus, processor, spec, seed)
    history["opt_loss"] = hist2["loss"]
    return itm, opt, history


def _train_qformer(itm, opt, encoded, captions: list, labels, tok, spec: dict, seed: int,
                   phases) -> dict:
    """Step 1 of :func:`train_blip2`: the retrieval model's Q-Former side (and the captioner's
    language side, through which its captioning loss runs) on the frozen encoder's outputs
    ``encoded`` (n_scenes, n_patches, hidden). Returns the per-step ``itm_loss`` and
    ``lm_loss``; leaves ``itm`` in eval mode with every weight trainable again."""
    import torch
    import torch.nn.functional as F

    config = itm.config
    nq, image_token = config.num_query_tokens, config.image_token_index
    ids, mask = encode_captions(tok, captions, nq, image_token, add_eos=False)
    lm_ids, lm_mask = encode_captions(tok, captions, nq, image_token, add_eos=True)
    lm_labels = caption_labels(lm_ids, lm_mask, image_token, tok.bos_token_id)
    rng = np.random.default_rng([int(seed), 2001])

    aux_head = None
    lm_parts = list(opt.language_projection.parameters()) + list(opt.language_model.parameters())
    params = [p for p in itm.parameters() if p.requires_grad] + lm_parts
    if spec.get("itm_aux"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) * 7919 + 17)
            aux_head = torch.nn.Linear(nq * config.image_text_hidden_size, labels.shape[1])
        params += list(aux_head.parameters())
    lm_weight = float(spec.get("itm_lm_weight", 1.0))
    history = {"itm_loss": [], "lm_loss": []}

    def step_loss(idx):
        j = rng.integers(ids.shape[1], size=len(idx))
        k = rng.integers(ids.shape[1], size=len(idx))
        emb = encoded[idx]
        q = qformer_query_outputs(itm, emb)
        b_ids, b_mask = _trim(ids[idx, j], mask[idx, j])
        sim, image_embeds = itc_logits(itm, q, b_ids, b_mask)
        target = torch.arange(len(idx))
        logits = sim / spec["temperature"]
        itc = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        c_ids, c_mask = _trim(lm_ids[idx, k], lm_mask[idx, k])
        c_lab = lm_labels[idx, k][:, : c_ids.shape[1]]
        lm_out = lm_logits(opt, q, c_ids, c_mask)
        lm = F.cross_entropy(lm_out[:, :-1].reshape(-1, lm_out.shape[-1]),
                             c_lab[:, 1:].reshape(-1), ignore_index=-100)
        loss = itc + lm_weight * lm
        if aux_head is not None:
            aux = aux_head(image_embeds.flatten(1))
            loss = loss + float(spec["itm_aux"]) * F.binary_cross_entropy_with_logits(
                aux, labels[idx])
        history["itm_loss"].append(round(float(itc.detach()), 4))
        history["lm_loss"].append(round(float(lm.detach()), 4))
        return loss

    itm.train()
    itm.vision_model.eval()
    opt.train()
    with phases.phase("blip2/Q-Former stage 1 (contrastive + captioning)"):
        train_epochs(step_loss, params, len(captions), spec["itm_batch"], spec["itm_epochs"],
                     spec["itm_lr"], rng, "blip2 Q-Former")
    itm.requires_grad_(True)
    itm.eval()
    return history


def _copy_vision_side(itm, opt) -> None:
    """Give the captioner its own copy of the retrieval model's (trained) vision encoder,
    Q-Former and query tokens."""
    opt.vision_model.load_state_dict(itm.vision_model.state_dict())
    missing, _ = opt.qformer.load_state_dict(itm.qformer.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"Q-Former weights missing when copying from the ITM model: {missing}")
    opt.query_tokens.data.copy_(itm.query_tokens.data)


# --------------------------------------------------------------------------- stage 2
def batched_query_outputs(model, encoded, batch_size: int = 256):
    """Q-Former outputs (n, num_query_tokens, qformer_hidden) of a BLIP-2 model, no grad.

    ``encoded`` holds the image encoder's last hidden states, (n, 1 + n_patches, hidden)
    (:func:`image_encoder_outputs`).
    """
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(encoded), batch_size):
            out.append(qformer_query_outputs(model, encoded[i : i + batch_size]))
    return torch.cat(out).clone()


def lm_logits(model, queries, ids, mask):
    """Language-model logits given precomputed Q-Former outputs.

    The same computation as :meth:`Blip2ForConditionalGeneration.forward` after its vision
    half (projected query outputs replace the ``<image>`` embeddings), so training on cached
    Q-Former outputs of the frozen vision side is exact.

    Parameters
    ----------
    queries : FloatTensor of shape (B, num_query_tokens, qformer_hidden)
    ids, mask : LongTensor of shape (B, L)

    Returns
    -------
    logits : FloatTensor of shape (B, L, vocab)
    """
    emb = model.get_input_embeddings()(ids)
    proj = model.language_projection(queries).to(emb.dtype)
    image_mask = (ids == model.config.image_token_id).unsqueeze(-1).expand_as(emb)
    emb = emb.masked_scatter(image_mask, proj)
    return model.language_model(inputs_embeds=emb, attention_mask=mask).logits


def caption_labels(ids, mask, image_token_id: int, bos_token_id: int):
    """Labels for teacher forcing: the ids, with image tokens, BOS and padding set to -100."""
    labels = ids.clone()
    labels[(mask == 0) | (ids == image_token_id) | (ids == bos_token_id)] = -100
    return labels



def _train_language_side(model, encoded, corpus, processor, spec: dict, seed: int):
    """Train only the language projection and OPT of a captioner on cached query outputs.

    ``encoded``: the frozen image encoder's outputs for ``corpus`` (n, 1 + n_patches, hidden).
    """
    import torch.nn.functional as F

    tok = processor.tokenizer
    cfg = model.config
    for module in (model.vision_model, model.qformer):
        module.requires_grad_(False)
    model.query_tokens.requires_grad_(False)
    model.eval()
    queries = batched_query_outputs(model, encoded)
    ids, mask = encode_captions(tok, corpus.captions, cfg.num_query_tokens, cfg.image_token_id,
                                add_eos=True)
    n_img, n_cap, length = ids.shape
    ids, mask = ids.view(-1, length), mask.view(-1, length)
    img_of = np.repeat(np.arange(n_img), n_cap)
    labels = caption_labels(ids, mask, cfg.image_token_id, tok.bos_token_id)
    rng = np.random.default_rng([int(seed), 2002])
    n_pairs = len(ids)
    bs = min(int(spec["opt_batch"]), n_pairs)
    # "epochs" of opt_pairs_per_epoch pairs each, drawn from reshuffled passes over all pairs
    total = (int(spec.get("opt_pairs_per_epoch") or n_pairs) // bs) * int(spec["opt_epochs"])

    def step_loss(idx):
        b_ids, b_mask = _trim(ids[idx], mask[idx])
        b_lab = labels[idx][:, : b_ids.shape[1]]
        logits = lm_logits(model, queries[img_of[idx]], b_ids, b_mask)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                               b_lab[:, 1:].reshape(-1), ignore_index=-100)

    model.language_model.train()
    model.language_projection.train()
    history = train_epochs(step_loss, [p for p in model.parameters() if p.requires_grad],
                           n_pairs, bs, -(-total // (n_pairs // bs)), spec["opt_lr"],
                           rng, "blip2-toy-opt", max_steps=total)
    model.requires_grad_(True)
    model.eval()
    gen = model.generation_config
    gen.max_new_tokens = int(spec.get("max_new_tokens", 32))
    gen.do_sample = False
    gen.num_beams = 1
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    return model, history
