"""The settings of stage 2 in one dataclass, and the one dict through which a notebook changes them.

Chapter 04 exposes the parameters a reader changes (epochs, how the brain map is tuned, the
controls); every other setting of the optimisation, the heads and the validation split is a
default of :class:`TrainConfig`, changed by the notebook's ``stage2_overrides`` dict
(:meth:`TrainConfig.from_overrides`, which names an unknown key and lists the valid ones).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from lib.decoding.contrastive import DEFAULT_CONTRASTIVE_WEIGHT, DEFAULT_MSE_WEIGHT

#: Fields of :class:`TrainConfig` that configure the model (:meth:`TrainConfig.model_kwargs`).
MODEL_FIELDS = ("mse_weight", "contrastive_weight", "label_smoothing", "brain_projection_init",
                "train_itm")
#: Left out of the checkpoint fingerprint: how often validation runs does not change training.
_NOT_FINGERPRINTED = ("eval_every",)


@dataclass
class TrainConfig:
    """Settings of stage 2: optimisation (:func:`fit`), model heads and the validation split.

    The defaults are the book's (the toy world's); a notebook changes them through one dict,
    ``stage2_overrides`` (:meth:`from_overrides`). The original study used lr 1e-4 (from an LR
    finder), the brain map at lr / 5, batch 32, accumulation 2, clipping at 1.0, AdamW weight
    decay 0.01, 10 epochs, loss weights 0.7 (MSE) and 0.3 (contrastive), label smoothing 0.1, a
    fresh brain projection and a fine-tuned ITM Q-Former (``train_itm``); ``nsd.yaml`` sets its
    learning rate and schedule.

    Attributes
    ----------
    lr, brain_lr_factor, weight_decay : float
        AdamW; the brain map learns at ``lr * brain_lr_factor``.
    betas : tuple of float
        AdamW's moment coefficients.
    batch_size, grad_accum : int
        Pairs per micro-batch; micro-batches per optimizer step.
    epochs, warmup_steps : int
        Length of training; linear warm-up (optimizer steps) before the cosine decay.
    clip_norm : float
        Gradient-norm clipping.
    eval_every, checkpoint_every : int
        Validation and resumable-checkpoint intervals, in optimizer steps.
    patience : int or None
        Stop after this many validations in a row without a better value (None: train every
        epoch). Training until the stop follows the full run's trajectory, so the best
        checkpoint is the full run's whenever that came before the stop.
    select_by : {"val_loss", "val_top1"}
        Validation criterion of the best checkpoint.
    seed : int
        Batch order, validation draw, head initialisation and validation split.
    amp : bool
        bf16 autocast on CUDA.
    max_length : int
        Caption tokens.
    val_fraction : float
        Training images held out for validation (:func:`lib.decoding.stage2_data`).
    mse_weight, contrastive_weight, label_smoothing : float
        Loss of :class:`lib.decoding.BrainTextContrastive` (:meth:`model_kwargs`).
    brain_projection_init : {"fresh", "vision_projection"}
        Initialisation of the brain projection.
    train_itm : bool
        Also fine-tune the ITM Q-Former and projections (the original did).
    """

    lr: float = 1e-3
    brain_lr_factor: float = 0.2
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    batch_size: int = 32
    grad_accum: int = 2
    epochs: int = 3
    warmup_steps: int = 20
    clip_norm: float = 1.0
    eval_every: int = 40
    checkpoint_every: int = 40
    patience: int | None = 5
    select_by: str = "val_loss"
    seed: int = 0
    amp: bool = True
    max_length: int = 32
    val_fraction: float = 0.1
    mse_weight: float = DEFAULT_MSE_WEIGHT
    contrastive_weight: float = DEFAULT_CONTRASTIVE_WEIGHT
    label_smoothing: float = 0.1
    brain_projection_init: str = "fresh"
    train_itm: bool = False

    @classmethod
    def from_overrides(cls, overrides: dict | None, name: str = "stage2_overrides",
                       **settings) -> TrainConfig:
        """The defaults, with ``settings`` (a notebook's own parameters, e.g. ``epochs``) and
        then ``overrides`` (a dict of other field names and values) applied.

        Raises
        ------
        ValueError
            Naming ``name``, the unknown key and the valid keys, when ``overrides`` holds a key
            that is not a field or that has its own parameter (a key of ``settings``).
        """
        if overrides is not None and not isinstance(overrides, dict):
            raise ValueError(f"{name} must be a dict of TrainConfig fields, e.g. {{'lr': 1e-4}}; "
                             f"got {overrides!r}")
        overrides = dict(overrides or {})
        valid = sorted(f.name for f in fields(cls) if f.name not in settings)
        unknown = sorted(k for k in overrides if k not in valid)
        if unknown:
            own = [k for k in unknown if k in settings]
            raise ValueError(
                f"{name}: unknown key(s) {unknown}"
                + (f" ({own} have a parameter of their own: set that instead)" if own else "")
                + f"; valid keys: {', '.join(valid)} (the fields of lib.decoding.TrainConfig)")
        return cls(**{**settings, **overrides})

    def model_kwargs(self) -> dict:
        """Keyword arguments of :class:`lib.decoding.BrainTextContrastive` set by this config
        (loss weights, label smoothing, brain projection, ``train_itm``, ``seed``)."""
        return {k: getattr(self, k) for k in MODEL_FIELDS + ("seed",)}

    def fingerprint(self) -> str:
        """Hash of the settings that change the training trajectory (a checkpoint resumes only
        when it matches): every field but ``eval_every``. The loss weights and label smoothing
        change the trajectory without changing the starting weights, which the checkpoint's
        other fingerprint covers."""
        keys = {k: v for k, v in asdict(self).items() if k not in _NOT_FINGERPRINTED}
        return hashlib.sha1(json.dumps(keys, sort_keys=True, default=list).encode()).hexdigest()

