"""Toy models in Hugging Face format, trained on the CPU on scenes apart from the experiment.

:func:`train_all` trains and saves, under ``models_dir``:

- ``blip2-toy-itm/``  :class:`~transformers.Blip2ForImageTextRetrieval` + ``Blip2Processor``
  (stand-in for ``Salesforce/blip2-itm-vit-g``), image-text contrastive training;
- ``blip2-toy-opt/``  :class:`~transformers.Blip2ForConditionalGeneration` + ``Blip2Processor``
  (stand-in for ``Salesforce/blip2-opt-2.7b``); vision encoder, Q-Former and query tokens
  equal to the ITM model's (stage 1 trains them with the contrastive loss and a captioning
  loss through this model's OPT), then frozen while the language side trains on
  (see :func:`lib.toyworld.models.blip2.train_blip2`);
- ``vision/<name>/``  ViT and ResNet classifiers at three sizes (+ untrained baselines);
- ``language/<name>/`` OPT causal language models at three sizes (+ an untrained baseline);
- ``zoo.json``        ``[{name, path, family, modality, n_params, trained}]``;
- ``TRAINING.json``   the preset, seeds, wall and CPU time per phase, held-out quality.

Everything is seeded: the same preset and seed give the same weights on the same machine
and thread count. Loading needs nothing but transformers (no custom classes).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

from .blip2 import caption_pixels, retrieval_top1

#: Presets: sizes of the training sets, architectures and schedules.
PRESETS: dict = {
    "toy": {
        "image_size": 64,
        "n_train": 12000,
        "n_val": 100,
        "min_count": 2,
        "blip2": {
            "vision_hidden": 96, "vision_layers": 4, "patch_size": 8,
            "vision_pretrain_epochs": 4, "vision_pretrain_batch": 64, "vision_pretrain_lr": 2e-3,
            "qformer_hidden": 128, "qformer_layers": 2, "num_query_tokens": 8,
            "embed_dim": 64, "lm_hidden": 128, "lm_layers": 2,
            "itm_epochs": 3, "itm_batch": 32, "itm_lr": 1e-3, "temperature": 0.07,
            "itm_aux": 1.0, "itm_lm_weight": 1.0,
            "opt_epochs": 4, "opt_batch": 64, "opt_lr": 5e-4, "opt_pairs_per_epoch": 3000,
            "max_new_tokens": 32,
        },
        "vision": {
            "n_train": 12000, "epochs": 4, "batch": 64, "lr": 2e-3,
            "sizes": {
                "vit": {"s": {"hidden": 32, "layers": 2, "patch": 8},
                        "m": {"hidden": 64, "layers": 3, "patch": 8},
                        "l": {"hidden": 96, "layers": 4, "patch": 8}},
                "resnet": {"s": {"width": 8, "depths": [1, 1, 1, 1]},
                           "m": {"width": 16, "depths": [1, 1, 1, 1]},
                           "l": {"width": 24, "depths": [1, 1, 1, 1]}},
            },
            "untrained": ["vit-l", "resnet-l"],
        },
        "language": {
            "n_train": 12000, "epochs": 1, "batch": 32, "lr": 2e-3, "captions_per_image": 5,
            "sizes": {"s": {"hidden": 16, "layers": 1}, "m": {"hidden": 32, "layers": 2},
                      "l": {"hidden": 64, "layers": 3}},
            "untrained": ["opt-l"],
        },
    },
}
PRESETS["micro"] = {
    "image_size": 64,
    "n_train": 96,
    "n_val": 16,
    "min_count": 1,
    "blip2": {
        **PRESETS["toy"]["blip2"],
        "vision_hidden": 32, "vision_layers": 1, "patch_size": 16, "qformer_hidden": 32,
        "qformer_layers": 1, "num_query_tokens": 4, "embed_dim": 16, "lm_hidden": 32,
        "lm_layers": 1, "vision_pretrain_epochs": 1, "itm_epochs": 1, "itm_batch": 32,
        "opt_epochs": 1, "opt_batch": 32,
        "opt_pairs_per_epoch": 96, "max_new_tokens": 12,
    },
    "vision": {
        "n_train": 64, "epochs": 1, "batch": 32, "lr": 2e-3,
        "sizes": {
            "vit": {"s": {"hidden": 8, "layers": 1, "patch": 16},
                    "m": {"hidden": 16, "layers": 1, "patch": 16},
                    "l": {"hidden": 24, "layers": 2, "patch": 16}},
            "resnet": {"s": {"width": 4, "depths": [1, 1, 1, 1]},
                       "m": {"width": 8, "depths": [1, 1, 1, 1]},
                       "l": {"width": 12, "depths": [1, 1, 1, 1]}},
        },
        "untrained": ["vit-l", "resnet-l"],
    },
    "language": {
        "epochs": 1, "batch": 64, "lr": 2e-3,
        "sizes": {"s": {"hidden": 8, "layers": 1}, "m": {"hidden": 16, "layers": 1},
                  "l": {"hidden": 24, "layers": 2}},
        "untrained": ["opt-l"],
    },
}


def get_preset(preset: str | dict) -> dict:
    """Return a deep copy of a named preset (or of a preset dict passed in)."""
    if isinstance(preset, dict):
        return copy.deepcopy(preset)
    if preset not in PRESETS:
        raise ValueError(f"unknown toy-model preset {preset!r}; expected one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[preset])


def _save_dir(path: Path, *objects) -> Path:
    """``save_pretrained`` every object into a temporary folder, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        for obj in objects:
            obj.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def train_all(models_dir, preset: str | dict = "toy", seed: int = 0,
              threads: int | str | None = "auto",
              parts=("blip2", "vision", "language")) -> dict:
    """Train and save every toy model (see the module docstring for the layout).

    Parameters
    ----------
    models_dir : path-like
        Output folder (``<toy_root>/models``); created if needed.
    preset : {"toy", "micro"} or dict
        ``toy``: the book's models (a few minutes on 2 CPU cores); ``micro``: tiny models for
        the tests (seconds), same folders and classes.
    seed : int
        World seed. The models' scenes come from ``numpy.random.default_rng([seed, 1000 + k])``,
        a stream apart from the simulated experiment's stimuli.
    threads : int, "auto" or None
        torch intra-op threads while training (restored afterwards): ``"auto"`` is
        ``OMP_NUM_THREADS`` when set, else the number of physical cores
        (:func:`lib.toyworld.models._train.auto_threads`; more threads than cores slows the
        small matrix products down), ``None`` keeps the current setting.
    parts : sequence of {"blip2", "vision", "language"}
        Which models to train (all by default). Each part depends only on the preset and
        seed, so parts trained in separate calls equal those of one call.

    Returns
    -------
    report : dict
        ``preset``, ``seed``, ``phases`` (``{phase: {"wall_s", "cpu_s"}}``: the corpus, each
        BLIP-2 step, each zoo model), ``total`` (``{"wall_s", "cpu_s"}``), ``quality``
        (held-out BLEU/CIDEr of ``blip2-toy-opt``, retrieval of ``blip2-toy-itm``, loss/mAP of
        the zoo models) and ``zoo`` (the rows of ``zoo.json``). Also written to
        ``models_dir/TRAINING.json``.
    """
    from ...io import write_json
    from ..timing import PhaseTimes, Stopwatch
    from ._train import auto_threads, num_threads
    from .data import make_corpus
    from .tokenizer import build_tokenizer

    name = preset if isinstance(preset, str) else "custom"
    cfg = get_preset(preset)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    size = int(cfg["image_size"])
    phases = PhaseTimes(prefix="[toyworld] models:")
    quality: dict = {}
    zoo: list = []
    threads = auto_threads() if threads == "auto" else threads
    with num_threads(threads), Stopwatch() as total:
        with phases.phase("corpus (render + caption)"):
            train = make_corpus(cfg["n_train"], seed, stream=0, image_size=size,
                                desc="train scenes")
            val = make_corpus(cfg["n_val"], seed, stream=1, image_size=size, desc="val scenes")
            tok = build_tokenizer([c for caps in train.captions for c in caps], cfg["min_count"])
        if "blip2" in parts:
            _train_blip2_part(models_dir, cfg, train, val, tok, seed, phases, quality)
        if "vision" in parts:
            _train_vision_part(models_dir, cfg, train, val, seed, phases, quality, zoo)
        if "language" in parts:
            _train_language_part(models_dir, cfg, train, val, tok, seed, phases, quality, zoo)
        if zoo:
            write_json(models_dir / "zoo.json", zoo)
    report = {"preset": name, "seed": int(seed), "threads": threads,
              "phases": phases.as_dict(), "total": total.as_dict(),
              "quality": quality, "zoo": zoo, "config": cfg}
    write_json(models_dir / "TRAINING.json", report)
    return report


def _train_blip2_part(models_dir, cfg, train, val, tok, seed, phases, quality):
    from . import blip2

    size = int(cfg["image_size"])
    spec = cfg["blip2"]
    processor = blip2.make_processor(tok, size, spec["num_query_tokens"])
    itm, opt, hist = blip2.train_blip2(train, processor, spec, size, seed, phases=phases)
    with phases.phase("blip2/eval (held-out captions + retrieval) and save"):
        _save_dir(models_dir / "blip2-toy-itm", itm, processor)
        _save_dir(models_dir / "blip2-toy-opt", opt, processor)
        quality["blip2"] = blip2.evaluate(itm, opt, processor, val)
    for key in ("itm_loss", "lm_loss", "opt_loss"):
        tail = hist[key][-10:]
        quality["blip2"][f"final_train_{key}"] = float(sum(tail) / max(len(tail), 1))


def _train_vision_part(models_dir, cfg, train, val, seed, phases, quality, zoo):
    import torch
    from tqdm.auto import tqdm

    from . import vision_zoo
    from ._train import count_params

    size = int(cfg["image_size"])
    vspec = cfg["vision"]
    n_v = min(int(vspec["n_train"]), len(train))
    labels = torch.from_numpy(train.labels[:n_v])
    val_labels = torch.from_numpy(val.labels)
    stream = 100
    jobs = [(fam, s) for fam, sizes in vspec["sizes"].items() for s in sizes]
    pixels = {}  # one pass of each family's image processor serves its three sizes
    for fam, s in tqdm(jobs, desc="vision zoo", leave=False):
        stream += 1
        mname = f"{fam}-{s}"
        if fam not in pixels:
            with phases.phase(f"vision/{fam} pixels"):
                proc = vision_zoo.image_processor(fam, size)
                pixels = {fam: (proc, proc(list(train.images[:n_v]), return_tensors="pt")[
                    "pixel_values"], proc(list(val.images), return_tensors="pt")["pixel_values"])}
        proc, px, val_px = pixels[fam]
        variants = [(mname, True)]
        if mname in vspec.get("untrained", []):
            variants.append((f"{mname}-untrained", False))
        for vname, trained in variants:
            with phases.phase(f"vision/{vname}"):
                model = vision_zoo.build_vision_model(fam, vspec["sizes"][fam][s], size, seed,
                                                      stream)
                if trained:
                    vision_zoo.train_vision_model(model, px, labels, vspec, seed, stream, vname)
                model.eval()
                quality[f"vision/{vname}"] = vision_zoo.evaluate_vision_model(model, val_px,
                                                                              val_labels)
                _save_dir(models_dir / "vision" / vname, model, proc)
            zoo.append({"name": vname, "path": f"vision/{vname}", "family": fam,
                        "modality": "vision", "n_params": count_params(model.base_model),
                        "trained": trained})


def _train_language_part(models_dir, cfg, train, val, tok, seed, phases, quality, zoo):
    from tqdm.auto import tqdm

    from . import language_zoo
    from ._train import count_params
    from .language_zoo import encode_texts

    lspec = cfg["language"]
    with phases.phase("language/encode captions"):
        per_image = int(lspec.get("captions_per_image") or len(train.captions[0]))
        n_images = min(int(lspec.get("n_train") or len(train)), len(train))
        texts = [c for caps in train.captions[:n_images] for c in caps[:per_image]]
        ids, mask = encode_texts(tok, texts)
        val_ids, val_mask = encode_texts(tok, [c for caps in val.captions for c in caps])
    stream = 200
    for s, size_spec in tqdm(list(lspec["sizes"].items()), desc="language zoo", leave=False):
        stream += 1
        mname = f"opt-{s}"
        variants = [(mname, True)]
        if mname in lspec.get("untrained", []):
            variants.append((f"{mname}-untrained", False))
        for vname, trained in variants:
            with phases.phase(f"language/{vname}"):
                model = language_zoo.build_language_model(tok, size_spec, seed, stream)
                if trained:
                    language_zoo.train_language_model(model, ids, mask, lspec, seed, stream,
                                                      vname)
                model.eval()
                quality[f"language/{vname}"] = language_zoo.evaluate_language_model(
                    model, val_ids, val_mask)
                _save_dir(models_dir / "language" / vname, model, tok)
            zoo.append({"name": vname, "path": f"language/{vname}", "family": "opt",
                        "modality": "language", "n_params": count_params(model.base_model),
                        "trained": trained})


__all__ = ["PRESETS", "caption_pixels", "get_preset", "retrieval_top1", "train_all"]
