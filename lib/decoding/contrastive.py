"""Stage 2: contrastive fine-tuning of the brain map against BLIP-2's image-text-matching Q-Former.

The stage-1 map (fMRI -> Q-Former query tokens, a ridge solution) becomes trainable and is
tuned with two objectives, as in the original study:

* **MSE** between the predicted and the true query tokens (keeps the prediction decodable by
  the captioning model);
* **contrastive** (BLIP-2's image-text contrastive loss, ITC): the predicted query tokens go
  through a *brain projection* into the ITM embedding space; the captions go through the ITM
  model's text path (word embeddings -> Q-Former without queries -> CLS -> ``text_projection``,
  exactly what :class:`transformers.Blip2ForImageTextRetrieval` does with
  ``use_image_text_matching_head=False``). The similarity of a brain sample and a caption is the
  **maximum over query tokens** of their cosine, divided by a learnable temperature. Targets are
  soft: every caption of the same image is a positive (several captions per image, and an image
  may appear several times in a batch), then smoothed by ``label_smoothing`` (0.1 in the
  original). The brain-text loss is averaged with the same loss between the *true* query tokens
  (through ``vision_projection``) and the captions, as the original does.

Choices, following the original code unless stated:

* ``loss = mse_weight * MSE + contrastive_weight * mean(brain-text, image-text)`` with the
  original's defaults ``contrastive_weight=0.3``, ``mse_weight=0.7``
  (``loss_weights=[0.3, 0.7]``: ``0.3 * contrastive_loss + 0.7 * mse_loss``).
* The brain projection is a **fresh** ``Linear(qformer_hidden, image_text_hidden)`` as in the
  original (``brain_projection_init="vision_projection"`` starts it from the ITM image head
  instead).
* The temperature is a free parameter initialised at 0.07; unlike the original, and like BLIP-2
  itself, it is clamped to [0.001, 0.5] in the forward pass.
* The original also fine-tunes the Q-Former, the text embeddings and both projections. Here
  they are **frozen** by default (``train_itm=False``): the ITM space then stays the one in which
  stage 1 and stage 2 are compared (text retrieval), and on CPU the caption embeddings can be
  computed once. With the text side frozen the image-text term only moves the temperature.
* How the brain map is tuned (``brain_update``): ``"full"`` trains every weight of the ridge map
  (the original; 4 x 4 bytes per weight with AdamW, 43 GB at memory size 7 on NSD);
  ``"low_rank"`` keeps the ridge map ``W`` frozen and trains ``W + U V^T`` plus a bias shift
  (``U`` starts at zero, so training starts exactly at stage 1; a few million trainable values
  whatever the memory size; the frozen map is shared with the caller, not copied, and runs in
  float32 outside autocast); ``"frozen"`` trains nothing of the map (the head-only control).
  :mod:`lib.decoding.memory` accounts for each.

The ITC similarity and loss and the ITM text side are in :mod:`lib.decoding.itm`; the pairs in
:mod:`lib.decoding.pairs`, the training loop in :mod:`lib.decoding.loop`, its files in
:mod:`lib.decoding.checkpoints`.

Size: a little over the ~400-line aim (414 lines), 47 of them this docstring, which states the
method's choices next to the code that makes them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lib.decoding.itm import contrastive_loss

#: How the brain map can be tuned in stage 2 (see the module docstring).
BRAIN_UPDATES = ("full", "low_rank", "frozen")

#: Default loss weights of the original study (``0.3 * contrastive + 0.7 * mse``).
DEFAULT_CONTRASTIVE_WEIGHT = 0.3
DEFAULT_MSE_WEIGHT = 0.7

#: What stage 2 copies from the ITM checkpoint (its vision encoder is not kept).
ITM_PARTS = ("query_tokens", "embeddings", "qformer", "vision_projection", "text_projection")


# ----------------------------------------------------------------------------- model


@dataclass
class ContrastiveOutput:
    """Losses of one batch (scalar tensors) and the predicted query tokens."""

    loss: torch.Tensor
    mse: torch.Tensor
    contrastive: torch.Tensor
    brain_text: torch.Tensor
    image_text: torch.Tensor
    pred: torch.Tensor


class BrainTextContrastive(nn.Module):
    """Stage-1 brain map + BLIP-2 ITM text/image heads + a brain projection, for stage 2.

    Parameters
    ----------
    brain_map : torch.nn.Module
        The stage-1 map, ``brain_map(X)`` with X of shape (n, n_features) returning
        (n, n_query, hidden). It is deep-copied: the stage-1 module is left untouched.
    itm_model : transformers.Blip2ForImageTextRetrieval
        Source of the Q-Former, text embeddings, query tokens, ``vision_projection`` and
        ``text_projection`` (deep-copied; its vision encoder is not kept).
    mse_weight, contrastive_weight : float
        Loss weights (original study: 0.7 and 0.3).
    label_smoothing : float
        Smoothing of the contrastive targets (original: 0.1).
    temperature : float
        Initial temperature (original and BLIP-2: 0.07).
    brain_projection_init : {"fresh", "vision_projection"}
        Start the brain projection from scratch (original) or from the ITM ``vision_projection``.
    train_itm : bool
        Also fine-tune the Q-Former, text embeddings and projections (the original does);
        default False (frozen, see the module docstring).
    seed : int
        Seed of the fresh brain projection's (and of the low-rank factor ``V``'s) initialisation.
    brain_update : {"full", "low_rank", "frozen"}
        Train the whole map (a deep copy of ``brain_map``), a rank-``rank`` update of the frozen
        map, or nothing of it. With "low_rank" and "frozen" ``brain_map`` is not copied: it is
        frozen (``requires_grad=False``) and shared, and it is never modified.
    rank : int
        Rank of the low-rank update (``brain_update="low_rank"``).

    Notes
    -----
    Eleven arguments, past the house's eight: the two models and the nine settings the original
    study exposes (a nn.Module's constructor, like a transformers config).
    """

    def __init__(
        self,
        brain_map: nn.Module,
        itm_model,
        mse_weight: float = DEFAULT_MSE_WEIGHT,
        contrastive_weight: float = DEFAULT_CONTRASTIVE_WEIGHT,
        label_smoothing: float = 0.1,
        temperature: float = 0.07,
        brain_projection_init: str = "fresh",
        train_itm: bool = False,
        seed: int = 0,
        brain_update: str = "full",
        rank: int = 64,
    ):
        super().__init__()
        _check_arguments(itm_model, brain_update)
        config = itm_model.config
        self.brain_update = brain_update
        if brain_update == "full":
            self.brain_map = copy.deepcopy(brain_map)
        else:
            self.brain_map = brain_map.requires_grad_(False)
        for name in ITM_PARTS:
            setattr(self, name, copy.deepcopy(getattr(itm_model, name)))
        hidden = config.qformer_config.hidden_size
        gen = torch.Generator().manual_seed(seed)
        self.brain_projection = _brain_projection(
            hidden, config.image_text_hidden_size, brain_projection_init, self.vision_projection,
            gen)
        self.temp = nn.Parameter(torch.tensor(float(temperature)))
        if brain_update == "low_rank":
            self._init_low_rank(int(rank), config.num_query_tokens * hidden, gen)
        self.mse_weight = float(mse_weight)
        self.contrastive_weight = float(contrastive_weight)
        self.label_smoothing = float(label_smoothing)
        self.train_itm = bool(train_itm)
        self.n_query = config.num_query_tokens
        self.hidden = hidden
        for module in self.itm_modules():
            for p in module.parameters():
                p.requires_grad_(self.train_itm)
        self.query_tokens.requires_grad_(self.train_itm)

    def _init_low_rank(self, rank: int, n_out: int, gen: torch.Generator) -> None:
        """``delta_out`` (n_out, rank) zeros, ``delta_in`` (n_features, rank) ~ N(0, 1/n_features)
        (LoRA's initialisation: the update starts at exactly zero), ``delta_bias`` zeros."""
        n_in = _n_features(self.brain_map)
        if rank < 1:
            raise ValueError(f"rank={rank}: the low-rank update needs rank >= 1")
        self.delta_in = nn.Parameter(torch.randn(n_in, rank, generator=gen) / np.sqrt(n_in))
        self.delta_out = nn.Parameter(torch.zeros(n_out, rank))
        self.delta_bias = nn.Parameter(torch.zeros(n_out))

    def brain_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of the brain map (its update), empty when frozen."""
        if self.brain_update == "full":
            return [p for p in self.brain_map.parameters() if p.requires_grad]
        if self.brain_update == "low_rank":
            return [self.delta_in, self.delta_out, self.delta_bias]
        return []

    def merged_map(self) -> nn.Module:
        """A stand-alone copy of the tuned map (``W + U V^T``, ``b + delta_bias``), on CPU.

        For ``brain_update="low_rank"`` the map must have ``weight`` (n_out, n_features) and
        ``bias`` (n_out,), like :class:`lib.decoding.decoder.QueryTokenDecoder`.
        """
        merged = _cpu_copy(self.brain_map)
        if self.brain_update == "low_rank":
            with torch.no_grad():
                u, v = self.delta_out.detach().cpu(), self.delta_in.detach().cpu()
                for start in range(0, u.shape[0], 4096):  # no second full-size temporary
                    merged.weight[start:start + 4096].addmm_(u[start:start + 4096], v.T)
                merged.bias.add_(self.delta_bias.detach().cpu())
        return merged.requires_grad_(False)

    # -- parameter groups -------------------------------------------------------------
    def itm_modules(self) -> list[nn.Module]:
        """The modules taken from the ITM checkpoint (frozen unless ``train_itm``)."""
        return [self.embeddings, self.qformer, self.vision_projection, self.text_projection]

    def param_groups(self, lr: float, brain_lr_factor: float = 0.2) -> list[dict]:
        """AdamW parameter groups: the brain map at ``lr * brain_lr_factor``, the rest at ``lr``.

        The original used ``lr / 5`` for the brain map. Only trainable parameters are listed.
        """
        brain = self.brain_parameters()
        rest = list(self.brain_projection.parameters()) + [self.temp]
        if self.train_itm:
            for module in self.itm_modules():
                rest += list(module.parameters())
        return [
            {"params": brain, "lr": lr * brain_lr_factor, "name": "brain_map"},
            {"params": rest, "lr": lr, "name": "heads"},
        ]

    def train(self, mode: bool = True):
        """Frozen ITM modules stay in eval mode (no dropout) when ``train_itm`` is False."""
        super().train(mode)
        if not self.train_itm:
            for module in self.itm_modules():
                module.eval()
        return self

    # -- embeddings -------------------------------------------------------------------
    @property
    def temperature(self) -> torch.Tensor:
        """The temperature clamped to [0.001, 0.5], as BLIP-2 does."""
        return self.temp.clamp(0.001, 0.5)

    def predict_tokens(self, X: torch.Tensor) -> torch.Tensor:
        """Query tokens predicted from brain data: (n, n_features) -> (n, n_query, hidden).

        When the brain map takes several input blocks (a memory window: ``block_sizes`` of a
        :class:`lib.decoding.decoder.QueryTokenDecoder`), ``X`` holds them side by side and is
        split here.
        """
        sizes = getattr(self.brain_map, "block_sizes", None)
        # float32 outside autocast: the map's predictions stay those of stage 1, and no bf16
        # copy of the (up to 2.7 B-weight) map is made at every step
        with torch.autocast(device_type=X.device.type, enabled=False):
            X = X.float()
            if sizes is not None and len(sizes) > 1:
                out = self.brain_map(list(torch.split(X, list(sizes), dim=1)))
            else:
                out = self.brain_map(X)
            if self.brain_update == "low_rank":
                delta = (X @ self.delta_in) @ self.delta_out.T + self.delta_bias
                out = out + delta.reshape(out.shape)
        return out

    def brain_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised brain embeddings (n, n_query, dim) through the brain projection."""
        return F.normalize(self.brain_projection(tokens), dim=-1)

    def image_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings (n, n_query, dim) through the ITM ``vision_projection``."""
        return F.normalize(self.vision_projection(tokens), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised caption embeddings (n, dim): the Q-Former text path's CLS token.

        Parameters
        ----------
        input_ids, attention_mask : LongTensor of shape (n, seq_len)
            Captions tokenised by the ITM processor's tokenizer (no image placeholders).
        """
        embeds = self.embeddings(input_ids=input_ids)
        out = self.qformer(
            query_embeds=embeds, query_length=0, attention_mask=attention_mask, return_dict=True
        )
        cls = out.last_hidden_state[:, 0, :].to(self.text_projection.weight.dtype)
        return F.normalize(self.text_projection(cls), dim=-1)

    # -- loss ----------------------------------------------------------------------------
    def forward(
        self,
        X: torch.Tensor,
        true_tokens: torch.Tensor,
        image_ids: torch.Tensor,
        text_feats: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pred: torch.Tensor | None = None,
    ) -> ContrastiveOutput:
        """Losses for a batch of (brain sample, caption) pairs.

        Parameters
        ----------
        X : Tensor of shape (n, n_features)
            Brain data of each pair.
        true_tokens : Tensor of shape (n, n_query, hidden)
            Q-Former outputs of each pair's image.
        image_ids : Tensor of shape (n,)
            Image (nsd id) of each pair.
        text_feats : Tensor of shape (n, dim), optional
            Precomputed normalised caption embeddings (allowed only with ``train_itm=False``).
        input_ids, attention_mask : LongTensor of shape (n, seq_len), optional
            Tokenised captions, when ``text_feats`` is not given.
        pred : Tensor of shape (n, n_query, hidden), optional
            The brain map's predictions for ``X`` when already computed (evaluation computes
            them once per brain sample, not once per caption).

        Returns
        -------
        out : ContrastiveOutput
        """
        if pred is None:
            pred = self.predict_tokens(X)
        mse = F.mse_loss(pred.float(), true_tokens.float())
        if text_feats is None:
            if input_ids is None:
                raise ValueError("give either text_feats or input_ids (+ attention_mask)")
            text_feats = self.text_features(input_ids, attention_mask)
        elif self.train_itm:
            raise ValueError("precomputed text_feats cannot be used with train_itm=True")
        temp = self.temperature
        brain_text = contrastive_loss(
            self.brain_features(pred).float(), text_feats.float(), image_ids, temp,
            self.label_smoothing,
        )
        image_text = contrastive_loss(
            self.image_features(true_tokens).float(), text_feats.float(), image_ids, temp,
            self.label_smoothing,
        )
        con = (brain_text + image_text) / 2
        loss = self.mse_weight * mse + self.contrastive_weight * con
        return ContrastiveOutput(loss, mse, con, brain_text, image_text, pred)


@torch.no_grad()
def predict_tokens(model, X, batch_size: int = 256, device="cpu") -> np.ndarray:
    """Query tokens predicted by the (trained) brain map.

    Parameters
    ----------
    model : BrainTextContrastive or the brain map itself
    X : ndarray of shape (n, n_features)
    batch_size : int
    device : str or torch.device

    Returns
    -------
    pred : ndarray of shape (n, n_query, hidden), float32
    """
    fn = model.predict_tokens if hasattr(model, "predict_tokens") else model
    was = model.training
    model.eval()
    out = []
    for start in range(0, len(X), batch_size):
        x = torch.as_tensor(np.asarray(X[start:start + batch_size], dtype=np.float32)).to(device)
        out.append(fn(x).float().cpu().numpy())
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


# ----------------------------------------------------------------------------- helpers


def _check_arguments(itm_model, brain_update: str) -> None:
    """Clear errors for an unknown ``brain_update`` or an ITM model without a text path."""
    if brain_update not in BRAIN_UPDATES:
        raise ValueError(f"brain_update={brain_update!r}; expected one of {BRAIN_UPDATES}")
    if not getattr(itm_model.config.qformer_config, "use_qformer_text_input", False):
        raise ValueError(
            "itm_model must be a Blip2ForImageTextRetrieval whose qformer_config has "
            "use_qformer_text_input=True (the Q-Former's text path is needed)."
        )


def _brain_projection(hidden: int, dim: int, init: str, vision_projection: nn.Module,
                      gen: torch.Generator) -> nn.Linear:
    """``Linear(hidden, dim)``: fresh (nn.Linear's default init drawn from ``gen``) or a copy of
    the ITM ``vision_projection`` (``init="vision_projection"``)."""
    proj = nn.Linear(hidden, dim)
    with torch.no_grad():
        if init == "fresh":
            bound = 1.0 / np.sqrt(hidden)  # nn.Linear's default init, seeded
            proj.weight.uniform_(-bound, bound, generator=gen)
            proj.bias.uniform_(-bound, bound, generator=gen)
        elif init == "vision_projection":
            proj.load_state_dict(vision_projection.state_dict())
        else:
            raise ValueError(
                f"brain_projection_init={init!r}; expected 'fresh' or 'vision_projection'")
    return proj


def _cpu_copy(brain_map: nn.Module) -> nn.Module:
    """A copy of the map on the host, without a second copy on the map's device."""
    from lib.decoding.decoder import QueryTokenDecoder

    if not isinstance(brain_map, QueryTokenDecoder):
        return copy.deepcopy(brain_map).cpu()
    merged = QueryTokenDecoder([0], brain_map.n_query, brain_map.hidden, brain_map.settings)
    merged.block_sizes = list(brain_map.block_sizes)
    merged.weight = nn.Parameter(brain_map.weight.detach().to("cpu", copy=True))
    merged.bias = nn.Parameter(brain_map.bias.detach().to("cpu", copy=True))
    return merged


def _n_features(brain_map: nn.Module) -> int:
    """Number of input features of a brain map (its block sizes, else its first matrix)."""
    sizes = getattr(brain_map, "block_sizes", None)
    if sizes is not None:
        return int(sum(sizes))
    for p in brain_map.parameters():
        if p.ndim == 2:
            return int(p.shape[1])
    raise ValueError("cannot tell the brain map's number of input features: give it "
                     "block_sizes or a weight matrix (n_out, n_features)")
