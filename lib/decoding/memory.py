"""Memory accounting of the decoding stages, from the real shapes, before anything runs.

:func:`memory_table` lists, for every stage and memory size, what is alive on the GPU and in host
RAM at the stage's peak: parameters, gradients, optimizer state, activations and data, in bytes,
from the data's shapes and the checkpoints' configurations (parameter counts of the BLIP-2 and
ITM models come from building them on PyTorch's ``meta`` device: exact, and instantaneous).
:func:`peak_memory` sums it to one peak per stage, memory size and device. The preflight of
``python -m lib.run --check`` compares these peaks with the machine.

What is exact and what is estimated. Parameters, gradients and AdamW state (``exp_avg``,
``exp_avg_sq`` and one float32 ``step`` per tensor) are counted exactly as the code allocates them
(``tests/test_memory.py`` compares them with the tensors of the models and optimizers that
``lib.decoding`` builds). Data arrays are exact given the shapes. The ridge solve's work arrays
follow :mod:`lib.ridge` (dual form: kernel, eigenvectors and cuSOLVER's ``syevd`` workspace of
about ``2 n^2``, and the k-fold's held-out inverses, ``17 n^2 / 5`` with the default grid, up
to :data:`lib.ridge.kfold.INVERSES_BUDGET`).
Activations and the CUDA context are estimates (rows named "estimate").

Stages (rows ``stage``): ``stage1`` (ridge fMRI -> query tokens, 03), ``stage2`` (contrastive
fine-tuning, 04; its host side includes the stage-1 refit without the validation images),
``stage2_head_only`` (the control of 04, after the first model is released),
``qformer_features`` (03) and ``captioning`` (05), the last two listed under memory size 1 only
(they do not depend on it). Each row also names its ``phase``: the components of one phase are
alive together, and a stage's peak is its largest phase. Rows with ``device == "disk"`` give the
files a stage writes (checkpoints hold only the trainable tensors: the last and the best).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pandas as pd

F32, BF16 = 4, 2
GIB = 2**30
CUDA_CONTEXT = 600 * 2**20  # CUDA context + allocator slack (estimate)

#: Widths of the real checkpoints, used when a model is a hub id not available locally.
REAL_BLIP2 = {
    "vision_config": {"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39,
                      "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
    "qformer_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "cross_attention_frequency": 2,
                       "encoder_hidden_size": 1408, "vocab_size": 30522},
    "text_config": {"model_type": "opt", "hidden_size": 2560, "ffn_dim": 10240,
                    "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 50272,
                    "word_embed_proj_dim": 2560, "max_position_embeddings": 2048},
    "num_query_tokens": 32,
}
REAL_ITM = {**REAL_BLIP2, "image_text_hidden_size": 256,
            "qformer_config": {**REAL_BLIP2["qformer_config"], "vocab_size": 30523,
                               "use_qformer_text_input": True}}


#: The ITM modules stage 2 copies (:class:`lib.decoding.contrastive.BrainTextContrastive`).
ITM_TEXT_PARTS = ("query_tokens", "embeddings", "qformer", "vision_projection", "text_projection")

# ----------------------------------------------------------------------------- configs


def _config(model, real: dict):
    """Blip2Config of a local folder, of the local hub cache, else of the real widths."""
    from transformers import Blip2Config

    path = Path(str(model))
    if (path / "config.json").is_file():
        return Blip2Config.from_dict(json.loads((path / "config.json").read_text()))
    try:
        return Blip2Config.from_pretrained(str(model), local_files_only=True)
    except (OSError, ValueError):  # not cached: the real checkpoint's widths
        return Blip2Config(**real)


@functools.lru_cache(maxsize=8)
def _meta_model(cls, config_json: str):
    import torch
    from transformers import Blip2Config

    with torch.device("meta"):
        return cls(Blip2Config.from_dict(json.loads(config_json)))


def _params(cls, config, parts=None) -> list:
    """Parameters of ``cls(config)`` (or of its attributes ``parts``), built on ``meta``."""
    import torch

    model = _meta_model(cls, config.to_json_string())
    if parts is None:
        return list(model.parameters())
    out = []
    for name in parts:
        part = getattr(model, name)
        out += [part] if isinstance(part, torch.nn.Parameter) else list(part.parameters())
    return out


def _count(cls, config, parts=None) -> int:
    return sum(p.numel() for p in _params(cls, config, parts))


def model_sizes(params: dict) -> dict:
    """Widths and parameter counts of the parameter file's BLIP-2 and ITM checkpoints.

    Returns
    -------
    sizes : dict
        ``n_query``, ``hidden`` (Q-Former width), ``vision_hidden``, ``text_hidden``,
        ``itm_dim``; ``n_captioner`` (all BLIP-2 parameters), ``n_qformer_encoder`` (vision +
        Q-Former + query tokens), ``n_itm`` (all ITM parameters), ``n_itm_text`` (the ITM
        modules stage 2 copies: query tokens, embeddings, Q-Former, both projections).
    """
    from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval

    cap = _config(params.get("blip2_model", "Salesforce/blip2-opt-2.7b"), REAL_BLIP2)
    itm = _config(params.get("itm_model", "Salesforce/blip2-itm-vit-g"), REAL_ITM)
    text = cap.text_config
    return {
        "n_query": int(cap.num_query_tokens), "hidden": int(cap.qformer_config.hidden_size),
        "vision_hidden": int(cap.vision_config.hidden_size),
        "text_hidden": int(getattr(text, "hidden_size", None) or text.d_model),
        "itm_dim": int(itm.image_text_hidden_size),
        "n_captioner": _count(Blip2ForConditionalGeneration, cap),
        "n_qformer_encoder": _count(Blip2ForConditionalGeneration, cap,
                                    ["vision_model", "qformer", "query_tokens"]),
        "n_itm": _count(Blip2ForImageTextRetrieval, itm),
        "n_itm_text": _count(Blip2ForImageTextRetrieval, itm, ITM_TEXT_PARTS),
        "n_itm_tensors_text": len(_params(Blip2ForImageTextRetrieval, itm, ITM_TEXT_PARTS)),
    }


# ----------------------------------------------------------------------------- shapes


def _samples(shapes: dict, m: int) -> dict:
    """Training/test samples and features of memory size ``m`` (averaged betas at m = 1)."""
    n_vox = int(shapes["n_voxels"])
    tr_trials = int(shapes["n_train_trials"])
    tr_img, te_img = int(shapes["n_train_images"]), int(shapes["n_test_images"])
    te_trials = int(shapes.get("n_test_trials", round(te_img * tr_trials / max(1, tr_img))))
    return {"n": tr_img if m == 1 else tr_trials, "n_test": te_img if m == 1 else te_trials,
            "p": n_vox * m, "n_vox": n_vox, "n_train_trials": tr_trials,
            "n_images": tr_img + te_img, "n_train_images": tr_img}


def _row(stage, m, phase, component, device, nbytes):
    return {"stage": stage, "memory_size": int(m), "phase": phase, "component": component,
            "device": device, "bytes": int(nbytes)}


def _ridge_rows(stage, m, s, t, dev, phase="ridge solve"):
    """The ridge solve (:class:`lib.ridge.RidgeCV`, k-fold grouped by image, float32): the
    eigendecomposition (dual form when n <= p, primal otherwise) and the held-out inverses of
    :func:`lib.ridge.kfold.kfold_eigen` (the default grid and folds), counted together."""
    from lib.decoding.stage1 import DEFAULT_CV_FOLDS
    from lib.ridge import DEFAULT_ALPHAS
    from lib.ridge.kfold import INVERSES_BUDGET

    n, p = s["n"], s["p"]
    k = min(n, p)
    inverses = len(DEFAULT_ALPHAS) * DEFAULT_CV_FOLDS * math.ceil(n / DEFAULT_CV_FOLDS) ** 2
    rows = [_row(stage, m, phase, "design matrix X (float32)", dev, n * p * F32),
            _row(stage, m, phase, f"Gram matrix ({k} x {k})", dev, k * k * F32),
            _row(stage, m, phase, "eigenvectors", dev, k * k * F32),
            _row(stage, m, phase, "eigh workspace (cuSOLVER syevd, ~2 k^2)", dev,
                 (2 * k * k + 6 * k + 1) * F32)]
    if inverses * F32 <= INVERSES_BUDGET:  # else one eigendecomposition per fold
        rows.append(_row(stage, m, phase, f"held-out inverses ({len(DEFAULT_ALPHAS)} alphas x "
                         f"{DEFAULT_CV_FOLDS} folds of n / {DEFAULT_CV_FOLDS} samples)", dev,
                         inverses * F32))
    if n > p:  # primal: U = Xc V / sqrt(s), (n, p)
        rows.append(_row(stage, m, phase, "left singular vectors U (n x p)", dev, n * p * F32))
    return rows


def _stage1_rows(m, s, sz, gpu):
    t = sz["n_query"] * sz["hidden"]
    n, p = s["n"], s["p"]
    host = "host"
    rows = _ridge_rows("stage1", m, s, t, gpu)
    if gpu != host:
        rows.append(_row("stage1", m, "ridge solve", "CUDA context (estimate)", gpu,
                         CUDA_CONTEXT))
        rows.append(_row("stage1", m, "ridge solve", "design matrix X (float32)", host,
                         n * p * F32))
    rows += [
        _row("stage1", m, "ridge solve", "targets Y (n x n_query*hidden)", host, n * t * F32),
        _row("stage1", m, "ridge solve", "coefficients (n_query*hidden x p)", host, t * p * F32),
        _row("stage1", m, "ridge solve", "Q-Former features of all images", host,
             s["n_images"] * t * F32),
    ]
    return rows


def _stage2_trainable(sz, p, update, rank, train_itm):
    """(numel, n_tensors) of the trainable brain-map update and of the heads."""
    t = sz["n_query"] * sz["hidden"]
    brain = {"full": (t * p + t, 2), "low_rank": ((p + t) * rank + t, 3), "frozen": (0, 0)}[update]
    heads = (sz["hidden"] * sz["itm_dim"] + sz["itm_dim"] + 1, 3)
    if train_itm:
        heads = (heads[0] + sz["n_itm_text"], heads[1] + sz["n_itm_tensors_text"])
    return brain, heads


def _stage2_gpu_rows(stage, m, s, sz, prm, update, dev):
    """Training phase of stage 2 on the device."""
    t = sz["n_query"] * sz["hidden"]
    p = s["p"]
    rank = int(prm.get("stage2_rank", 64))
    train_itm = bool(prm.get("stage2_train_itm", False))
    (nb, tb), (nh, th) = _stage2_trainable(sz, p, update, rank, train_itm)
    ph = "training"
    base = ("brain map W (float32, trainable)" if update == "full"
            else "brain map W (float32, frozen)")
    rows = [_row(stage, m, ph, base, dev, (t * p + t) * F32 if update != "full" else 0)]
    if update == "full":
        rows[0] = _row(stage, m, ph, base, dev, nb * F32)
    elif update == "low_rank":
        rows.append(_row(stage, m, ph, f"low-rank update U V^T + bias (rank {rank})", dev,
                         nb * F32))
    frozen_itm = 0 if train_itm else sz["n_itm_text"]
    rows += [
        _row(stage, m, ph, "ITM Q-Former text path + projections (frozen copies)", dev,
             frozen_itm * F32),
        _row(stage, m, ph, "heads (brain projection, temperature)" + (
            " + ITM modules" if train_itm else ""), dev, nh * F32),
        _row(stage, m, ph, "gradients", dev, (nb + nh) * F32),
        _row(stage, m, ph, "AdamW exp_avg + exp_avg_sq", dev, 2 * (nb + nh) * F32),
        _row(stage, m, ph, "AdamW step counters", dev, (tb + th) * F32),
    ]
    B = int(prm.get("stage2_batch_size", 32))
    nq, dim = sz["n_query"], sz["itm_dim"]
    act = B * p * F32 + 6 * B * t * F32 + 4 * B * nq * dim * F32 + 4 * B * B * nq * F32
    if update == "low_rank":
        act += 2 * B * rank * F32
    if train_itm:  # text path activations: 12-layer BERT-size, seq max_length
        L = int(prm.get("stage2_max_length", 64))
        act += 24 * B * L * sz["hidden"] * F32 * 4
    # predict_tokens batches; validation predictions, once per validation sample (~10%)
    pred = 256 * p * F32 + 256 * t * F32 + math.ceil(0.1 * s["n"]) * t * F32
    rows += [_row(stage, m, ph, "activations (estimate)", dev, max(act, pred)),
             _row(stage, m, ph, "CUDA context (estimate)", dev, CUDA_CONTEXT)]
    return rows


def _stage2_host_rows(stage, m, s, sz, prm, update):
    """Host side of 04: the stage-2 data and the ITM model, with the stage-1 refit (first
    phase) or, while training, the host copy a checkpoint write makes of the trained state."""
    t = sz["n_query"] * sz["hidden"]
    n, p, n_test = s["n"], s["p"], s["n_test"]
    caps = int(prm.get("captions_per_image", 5))
    (nb, _), (nh, _) = _stage2_trainable(sz, p, update, int(prm.get("stage2_rank", 64)),
                                         bool(prm.get("stage2_train_itm", False)))
    data = [
        ("brain samples X (train + validation)", n * p * F32),
        ("test brain samples", n_test * p * F32),
        ("true query tokens per sample", n * t * F32),
        ("Q-Former features of all images", s["n_images"] * t * F32),
        ("caption embeddings", n * caps * sz["itm_dim"] * F32),
        ("ITM model (float32)", sz["n_itm"] * F32),
    ]
    phases = {
        "data + stage-1 refit": data + [("refit: design matrix X", n * p * F32),
                                        ("refit: targets Y", n * t * F32),
                                        ("refit: coefficients = starting map", t * p * F32)],
        "training": data + [("checkpoint write: trained tensors + AdamW state",
                             3 * (nb + nh) * F32)],
    }
    return [_row(stage, m, ph, name, "host", nbytes)
            for ph, items in phases.items() for name, nbytes in items]


def _disk_rows(stage, m, s, sz, prm, update):
    t = sz["n_query"] * sz["hidden"]
    (nb, _), (nh, _) = _stage2_trainable(sz, s["p"], update, int(prm.get("stage2_rank", 64)),
                                         bool(prm.get("stage2_train_itm", False)))
    ph = "files"
    rows = [_row(stage, m, ph, "checkpoint (trainable tensors + AdamW state)", "disk",
                 3 * (nb + nh) * F32),
            _row(stage, m, ph, "best weights (trainable tensors)", "disk", (nb + nh) * F32)]
    if stage == "stage2":
        rows.append(_row(stage, m, ph, "decoder (merged map)", "disk", (t * s["p"] + t) * F32))
    return rows


# ----------------------------------------------------------------------------- public API


def memory_table(params: dict, shapes: dict) -> pd.DataFrame:
    """Bytes per stage, memory size, phase, component and device, from the real shapes.

    Parameters
    ----------
    params : dict
        A parameter file's dict: ``memory_sizes`` (default [1]), ``blip2_model``,
        ``itm_model`` (local folders are read; hub ids use the local cache or the real
        checkpoints' widths), ``device`` ("cpu" puts every row on the host), and the
        ``stage2_*`` keys (``stage2_brain_update`` default "low_rank", ``stage2_rank`` 64,
        ``stage2_batch_size`` 32, ``stage2_train_itm`` False, ``stage2_head_only_control``);
        the keys of a ``stage2_overrides`` dict count as ``stage2_<key>`` (``batch_size``,
        ``train_itm``, ``max_length``).
    shapes : dict
        ``n_voxels``, ``n_train_trials``, ``n_train_images``, ``n_test_images`` (optional:
        ``n_test_trials``, default the training repeats ratio; ``captions_per_image``, 5).

    Returns
    -------
    table : pandas.DataFrame
        Columns ``stage``, ``memory_size``, ``phase``, ``component``, ``device``
        ("gpu", "host" or "disk"), ``bytes``.
    """
    missing = {"n_voxels", "n_train_trials", "n_train_images", "n_test_images"} - set(shapes)
    if missing:
        raise KeyError(f"memory_table: shapes lacks {sorted(missing)}; give the prepared "
                       "subject's n_voxels, n_train_trials, n_train_images and n_test_images")
    sz = model_sizes(params)
    overrides = {f"stage2_{k}": v for k, v in (params.get("stage2_overrides") or {}).items()}
    prm = {**params, **overrides, "captions_per_image": shapes.get("captions_per_image", 5)}
    gpu = "host" if str(params.get("device", "cuda")) == "cpu" else "gpu"
    update = params.get("stage2_brain_update", "low_rank")
    rows = []
    for m in params.get("memory_sizes") or [1]:
        s = _samples(shapes, int(m))
        rows += _stage1_rows(m, s, sz, gpu)
        rows += _stage2_gpu_rows("stage2", m, s, sz, prm, update, gpu)
        rows += _stage2_host_rows("stage2", m, s, sz, prm, update)
        rows += _disk_rows("stage2", m, s, sz, prm, update)
        if params.get("stage2_head_only_control", True):
            rows += _stage2_gpu_rows("stage2_head_only", m, s, sz, prm, "frozen", gpu)
            rows += _stage2_host_rows("stage2_head_only", m, s, sz, prm, "frozen")
            rows += _disk_rows("stage2_head_only", m, s, sz, prm, "frozen")
    rows += _model_stage_rows(sz, gpu)
    table = pd.DataFrame(rows)
    if gpu == "host":  # one copy of the design matrix when the solve runs on the host
        dup = (table.stage == "stage1") & (table.component == "design matrix X (float32)")
        table = table.drop(table.index[dup][1::2])
    return table.reset_index(drop=True)


def _model_stage_rows(sz, gpu):
    half = F32 if gpu == "host" else BF16  # the captioner runs in bf16 on CUDA
    return [
        _row("qformer_features", 1, "extraction", "vision encoder + Q-Former (float32)", gpu,
             sz["n_qformer_encoder"] * F32),
        _row("captioning", 1, "generation", "BLIP-2 captioner", gpu, sz["n_captioner"] * half),
    ]


def peak_memory(table: pd.DataFrame) -> pd.DataFrame:
    """Peak bytes per stage, memory size and device: the largest phase's sum.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`memory_table`'s output.

    Returns
    -------
    peaks : pandas.DataFrame
        Columns ``stage``, ``memory_size``, ``device``, ``bytes``, ``gib``.
    """
    keys = ["stage", "memory_size", "device"]
    phase = table.groupby(keys + ["phase"], sort=False, as_index=False)["bytes"].sum()
    peaks = phase.groupby(keys, sort=False, as_index=False)["bytes"].max()
    peaks["gib"] = peaks["bytes"] / GIB
    return peaks


def fits(peaks: pd.DataFrame, gpu_bytes: float, host_bytes: float) -> pd.DataFrame:
    """``peaks`` with a ``fits`` column against a machine's GPU and host memory."""
    limit = peaks["device"].map({"gpu": gpu_bytes, "host": host_bytes}).fillna(math.inf)
    return peaks.assign(fits=peaks["bytes"] <= limit)
