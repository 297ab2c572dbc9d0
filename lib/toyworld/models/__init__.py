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

Size: a little over the ~400-line aim (about 415), 70 of them the presets
(:data:`MODEL_PRESETS`), which state every model's size and schedule in one place.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

from .blip2_quality import caption_pixels, retrieval_top1

#: Presets: sizes of the training sets, architectures and schedules.
MODEL_PRESETS: dict = {
    "toy": {
        "image_size": 64,
        "n_train": 12000,
        "n_val": 100,
        "min_count": 2,
        "max_workers": 4,
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
MODEL_PRESETS["micro"] = {
    "image_size": 64,
    "n_train": 96,
    "n_val": 16,
    "min_count": 1,
    "max_workers": 1,  # seconds of training: starting a process (torch, transformers) costs more
    "blip2": {
        **MODEL_PRESETS["toy"]["blip2"],
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


def model_preset(preset: str | dict) -> dict:
    """Return a deep copy of a named preset (or of a preset dict passed in)."""
    if isinstance(preset, dict):
        return copy.deepcopy(preset)
    if preset not in MODEL_PRESETS:
        raise ValueError(f"unknown toy-model preset {preset!r}; expected one of "
                         f"{sorted(MODEL_PRESETS)}")
    return copy.deepcopy(MODEL_PRESETS[preset])


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


# size: 92 lines, of which the signature and numpydoc docstring are 48 (the body is 44).
def train_all(models_dir, preset: str | dict = "toy", seed: int = 0,
              threads: int | str | None = "auto",
              parts=("blip2", "vision", "language"), workers: int | str = "auto") -> dict:
    """Train and save every toy model (see the module docstring for the layout).

    The models are trained in independent tasks (BLIP-2, each vision family, the language zoo),
    in ``workers`` processes side by side. The toy models are small: their matrix products
    keep one core busy far better than two, so on 2 cores two tasks on one thread each finish
    sooner than one task after the other on two threads.

    Parameters
    ----------
    models_dir : path-like
        Output folder (``<toy_root>/models``); created if needed.
    preset : {"toy", "micro"} or dict
        ``toy``: the book's models (about a quarter of an hour on 2 CPU cores); ``micro``: tiny
        models for the tests (seconds), same folders and classes.
    seed : int
        World seed. The models' scenes come from ``numpy.random.default_rng([seed, 1000 + k])``,
        a stream apart from the simulated experiment's stimuli.
    threads : int, "auto" or None
        torch intra-op threads for the whole training (restored afterwards), shared among the
        workers (each gets ``threads // workers``): ``"auto"`` is ``OMP_NUM_THREADS`` when
        set, else the number of physical cores
        (:func:`lib.toyworld.models._train.auto_threads`; more threads than cores slows the
        small matrix products down), ``None`` keeps the current setting (one worker).
    parts : sequence of {"blip2", "vision", "language"}
        Which models to train (all by default). Each part depends only on the preset and
        seed, so parts trained in separate calls equal those of one call.
    workers : int or "auto"
        Processes training side by side; ``1`` trains in this process. ``"auto"``: one per
        thread, at most the preset's ``max_workers`` (toy 4, micro 1) and at most one per
        3 GB of available memory (:func:`training_workers`). A model's weights depend on the
        threads it trained on (float sums), not on which process trained it. The processes
        start with ``spawn``: a script that trains with more than one worker needs the usual
        ``if __name__ == "__main__":`` guard (``python -m lib.toyworld`` and notebooks do not).

    Returns
    -------
    report : dict
        ``preset``, ``seed``, ``threads`` (per worker), ``workers``,
        ``worker_peak_rss_gb`` (the largest worker's peak memory; None in one process), ``phases``
        (``{phase: {"wall_s", "cpu_s"}}``: the corpus, each BLIP-2 step, each zoo model; the
        workers' phases overlap in time), ``total`` (``{"wall_s", "cpu_s"}``, the workers'
        CPU time included), ``quality`` (held-out BLEU/CIDEr of ``blip2-toy-opt``, retrieval
        of ``blip2-toy-itm``, loss/mAP of the zoo models) and ``zoo`` (the rows of
        ``zoo.json``). Also written to ``models_dir/TRAINING.json``.
    """
    from ...io import write_json
    from ..timing import PhaseTimes, Stopwatch
    from ._train import auto_threads, num_threads
    from .data import make_corpus
    from .tokenizer import build_tokenizer

    name = preset if isinstance(preset, str) else "custom"
    cfg = model_preset(preset)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    size = int(cfg["image_size"])
    phases = PhaseTimes(prefix="[toyworld] models:")
    tasks = _tasks(cfg, parts)
    threads = auto_threads() if threads == "auto" else threads
    if workers == "auto":
        workers = training_workers(threads or 1, int(cfg.get("max_workers", 1)), len(tasks))
    workers = max(1, min(int(workers), len(tasks)))
    per_worker = max(1, (threads or 1) // workers) if workers > 1 else threads
    with num_threads(threads), Stopwatch() as total:
        with phases.phase("corpus (render + caption)"):
            train = make_corpus(cfg["n_train"], seed, stream=0, image_size=size,
                                desc="train scenes")
            val = make_corpus(cfg["n_val"], seed, stream=1, image_size=size, desc="val scenes")
            tok = build_tokenizer([c for caps in train.captions for c in caps], cfg["min_count"])
        children_cpu = _children_cpu()
        results = _run_tasks(tasks, workers, per_worker,
                             (models_dir, cfg, train, val, tok, seed))
        children_cpu = _children_cpu() - children_cpu
    quality: dict = {}
    zoo: list = []
    for result in results:  # in task order, whichever finished first
        phases.phases.update(result["phases"])
        quality.update(result["quality"])
        zoo.extend(result["zoo"])
    if zoo:
        write_json(models_dir / "zoo.json", zoo)
    total_times = total.as_dict()
    total_times["cpu_s"] = round(total_times["cpu_s"] + children_cpu, 3)
    report = {"preset": name, "seed": int(seed), "threads": per_worker, "workers": workers,
              "phases": phases.as_dict(), "total": total_times,
              "worker_peak_rss_gb": _children_peak_rss_gb() if workers > 1 else None,
              "quality": quality, "zoo": zoo, "config": cfg}
    write_json(models_dir / "TRAINING.json", report)
    return report


def training_workers(threads: int, max_workers: int, n_tasks: int) -> int:
    """Processes to train in: one per thread, capped by the preset, the tasks and memory.

    A worker holds the training scenes, one family's pixels and its models: about 1-2.5 GB on
    the toy preset, so each gets 3 GB of the memory available now
    (:func:`lib.resources.host_memory`; no cap when it cannot tell).
    """
    from ...resources import host_memory

    workers = max(1, min(int(threads), int(max_workers), int(n_tasks)))
    available = host_memory()["available"]
    if available is not None:
        workers = min(workers, max(1, int(available // (3 * 2**30))))
    return workers


def _tasks(cfg: dict, parts) -> list[tuple]:
    """Independent training tasks, the costliest first (``(part, vision family or None)``)."""
    tasks = [("blip2", None)] if "blip2" in parts else []
    if "vision" in parts:
        tasks += [("vision", fam) for fam in cfg["vision"]["sizes"]]
    if "language" in parts:
        tasks.append(("language", None))
    return tasks


def _run_tasks(tasks: list, workers: int, threads, args: tuple) -> list[dict]:
    """Run :func:`_train_task` for every task, here or in ``workers`` processes (in order)."""
    if workers <= 1:
        return [_train_task(task, *args) for task in tasks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    print(f"[toyworld] models: {len(tasks)} parts in {workers} processes, {threads} thread(s) "
          "each (one line per model as it finishes)", flush=True)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(_train_task, task, *args, threads=threads) for task in tasks]
        try:
            return [future.result() for future in futures]
        except BrokenProcessPool as err:
            raise RuntimeError(
                f"a toy-model training process died. Either it ran out of memory (each of the "
                f"{workers} processes needs up to about 3 GB), or the script that started the "
                "build has no `if __name__ == \"__main__\":` guard (the processes are started "
                "with 'spawn', which imports the script again; see the message above). Train "
                "in one process with lib.toyworld.models.train_all(..., workers=1), or run the "
                "build as `python -m lib.toyworld build`.") from err


def _start_worker(threads: int) -> None:
    """Worker set-up: its thread count before torch starts, no progress bars (they'd interleave)."""
    from ...config import set_thread_variables

    set_thread_variables(threads)
    os.environ["TQDM_DISABLE"] = "1"


def _children_cpu() -> float:
    """CPU seconds of this process's finished child processes so far (user + system)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _children_peak_rss_gb() -> float:
    """Largest peak resident memory of this process's finished child processes, in GB."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2)  # KiB


def _train_task(task: tuple, models_dir, cfg, train, val, tok, seed, threads=None) -> dict:
    """Train one task's models (in this process); return its phases, quality and zoo rows."""
    from ..timing import PhaseTimes
    from ._train import num_threads

    part, family = task
    phases = PhaseTimes(prefix="[toyworld] models:")
    quality: dict = {}
    zoo: list = []
    with num_threads(threads):
        if part == "blip2":
            _train_blip2_part(models_dir, cfg, train, val, tok, seed, phases, quality)
        elif part == "vision":
            _train_vision_part(models_dir, cfg, train, val, seed, phases, quality, zoo, family)
        else:
            _train_language_part(models_dir, cfg, train, val, tok, seed, phases, quality, zoo)
    return {"phases": phases.as_dict(), "quality": quality, "zoo": zoo}


def _train_blip2_part(models_dir, cfg, train, val, tok, seed, phases, quality):
    from . import blip2
    from .blip2_quality import evaluate_from_pixels

    size = int(cfg["image_size"])
    spec = cfg["blip2"]
    processor = blip2.make_processor(tok, size, spec["num_query_tokens"])
    itm, opt, hist = blip2.train_blip2(train, processor, spec, size, seed, phases=phases)
    with phases.phase("blip2/eval (held-out captions + retrieval) and save"):
        _save_dir(models_dir / "blip2-toy-itm", itm, processor)
        _save_dir(models_dir / "blip2-toy-opt", opt, processor)
        quality["blip2"] = evaluate_from_pixels(itm, opt, processor, val)
    for key in ("itm_loss", "lm_loss", "opt_loss"):
        tail = hist[key][-10:]
        quality["blip2"][f"final_train_{key}"] = float(sum(tail) / max(len(tail), 1))


def _train_vision_part(models_dir, cfg, train, val, seed, phases, quality, zoo, family):
    """Train (and save) one vision family's models; its three sizes share one pass of pixels."""
    import torch
    from tqdm.auto import tqdm

    from . import vision_zoo
    from ._train import count_params

    size = int(cfg["image_size"])
    vspec = cfg["vision"]
    n_v = min(int(vspec["n_train"]), len(train))
    labels = torch.from_numpy(train.labels[:n_v])
    val_labels = torch.from_numpy(val.labels)
    # seed streams 101, 102, ... over every family's sizes, whichever family this task trains
    streams = {job: 101 + k for k, job in enumerate(
        (fam, s) for fam, sizes in vspec["sizes"].items() for s in sizes)}
    with phases.phase(f"vision/{family} pixels"):
        proc = vision_zoo.image_processor(family, size)
        px = proc(list(train.images[:n_v]), return_tensors="pt")["pixel_values"]
        val_px = proc(list(val.images), return_tensors="pt")["pixel_values"]
    for s in tqdm(vspec["sizes"][family], desc=f"vision zoo ({family})", leave=False):
        mname, stream = f"{family}-{s}", streams[family, s]
        variants = [(mname, True)]
        if mname in vspec.get("untrained", []):
            variants.append((f"{mname}-untrained", False))
        for vname, trained in variants:
            with phases.phase(f"vision/{vname}"):
                model = vision_zoo.build_vision_model(family, vspec["sizes"][family][s], size,
                                                      seed, stream)
                if trained:
                    vision_zoo.train_vision_model(model, px, labels, vspec, seed, stream, vname)
                model.eval()
                quality[f"vision/{vname}"] = vision_zoo.evaluate_vision_model(model, val_px,
                                                                              val_labels)
                _save_dir(models_dir / "vision" / vname, model, proc)
            zoo.append({"name": vname, "path": f"vision/{vname}", "family": family,
                        "modality": "vision", "n_params": count_params(model.base_model),
                        "trained": trained})


def _train_language_part(models_dir, cfg, train, val, tok, seed, phases, quality, zoo):
    from tqdm.auto import tqdm

    from . import language_zoo
    from ._train import count_params
    from .language_zoo import caption_ids

    lspec = cfg["language"]
    with phases.phase("language/encode captions"):
        per_image = int(lspec.get("captions_per_image") or len(train.captions[0]))
        n_images = min(int(lspec.get("n_train") or len(train)), len(train))
        texts = [c for caps in train.captions[:n_images] for c in caps[:per_image]]
        ids, mask = caption_ids(tok, texts)
        val_ids, val_mask = caption_ids(tok, [c for caps in val.captions for c in caps])
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


__all__ = ["MODEL_PRESETS", "caption_pixels", "model_preset", "retrieval_top1", "train_all",
           "training_workers"]
