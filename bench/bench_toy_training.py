"""Toy-model training: one process on every thread, or one process per thread side by side.

``lib.toyworld.models.train_all`` trains its tasks in parallel processes on one thread each
(``workers="auto"``) because the toy models' matrix products are too thin to keep two threads
busy. This benchmark measures that choice on the machine at hand: it trains the first
``--samples`` scenes of the toy preset (one epoch, the preset's batch and learning rate) for
each of ``--models``, each run in a fresh subprocess:

- **one process, T threads** (T = ``--threads``, default the physical cores): what one worker
  on every thread does;
- **one process, 1 thread**;
- **T processes side by side, 1 thread each**: what ``train_all`` does on T cores.

and prints milliseconds per training sample and the pair's throughput against the one
process on T threads (above 1: parallel processes win). It also prints the float32
throughput of torch's and NumPy's matmul on the ViT-l training shapes (batch 64 x 65 tokens,
width 96, MLP 384) beside a square 1024^3 product.

Usage::

    python -m bench toy_training                       # ViT-l, ViT-m, ResNet-l; ~1-2 min
    python -m bench toy_training --models vit-s --samples 640
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def train_slice(model_name: str, samples: int) -> dict:
    """Train ``model_name`` (e.g. ``"vit-l"``) on ``samples`` toy scenes; time it (this process)."""
    import torch

    from lib.toyworld.models import MODEL_PRESETS, vision_zoo
    from lib.toyworld.models.data import make_corpus

    spec = {**MODEL_PRESETS["toy"]["vision"], "epochs": 1}
    family, size = model_name.split("-")
    corpus = make_corpus(samples, 0, stream=0, image_size=64)
    processor = vision_zoo.image_processor(family, 64)
    pixels = processor(list(corpus.images), return_tensors="pt")["pixel_values"]
    labels = torch.from_numpy(corpus.labels)
    model = vision_zoo.build_vision_model(family, spec["sizes"][family][size], 64, 0, 101)
    t0, c0 = time.perf_counter(), time.process_time()
    vision_zoo.train_vision_model(model, pixels, labels, spec, 0, 101, model_name)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"model": model_name, "threads": torch.get_num_threads(), "wall_s": wall,
            "cpu_s": cpu, "ms_per_sample": 1000 * wall / samples}


def _spawn(model_name: str, samples: int, threads: int) -> subprocess.Popen:
    from lib.config import THREAD_VARIABLES

    env = {**os.environ, "TQDM_DISABLE": "1", **{k: str(threads) for k in THREAD_VARIABLES}}
    return subprocess.Popen([sys.executable, "-m", "bench.bench_toy_training", "--worker",
                             model_name, "--samples", str(samples)],
                            stdout=subprocess.PIPE, env=env, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"training worker failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def matmul_rates(repeats: int = 20) -> list[dict]:
    """float32 GFLOP/s of torch and NumPy on the ViT-l training shapes and on 1024^3."""
    import torch

    def rate(product, a, b):
        product(a, b)
        t = time.perf_counter()
        for _ in range(repeats):
            product(a, b)
        return 2 * a.shape[0] * a.shape[1] * b.shape[1] * repeats / (time.perf_counter() - t) / 1e9

    rows = []
    for m, k, n in ((4160, 96, 384), (4160, 384, 96), (96, 4160, 384), (4160, 96, 288),
                    (1024, 1024, 1024)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        rows.append({"shape": f"{m} x {k} x {n}", "torch": rate(torch.mm, a, b),
                     "numpy": rate(lambda x, y: x @ y, a.numpy(), b.numpy())})
    return rows


def main(argv=None) -> dict:
    from lib.config import physical_cores

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="vit-l,vit-m,resnet-l")
    parser.add_argument("--samples", type=int, default=1280)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of the one-process run and processes of the parallel "
                             "run (default: the physical cores)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(train_slice(args.worker, args.samples)), flush=True)
        return {}
    threads = args.threads or physical_cores()
    print(f"load average {os.getloadavg()[0]:.2f}; {threads} threads / processes; "
          f"{args.samples} samples per run", flush=True)
    import torch

    torch.set_num_threads(threads)
    rates = matmul_rates()
    print("\nfloat32 matmul, GFLOP/s on " + f"{threads} threads")
    print("| shape (m x k x n) | torch | NumPy |\n|---|---:|---:|")
    for r in rates:
        print(f"| {r['shape']} | {r['torch']:.1f} | {r['numpy']:.1f} |")
    rows = []
    for name in args.models.split(","):
        together = _result(_spawn(name, args.samples, threads))
        alone = _result(_spawn(name, args.samples, 1))
        side = [_spawn(name, args.samples, 1) for _ in range(threads)]
        side = [_result(p) for p in side]
        per_sample = sum(r["ms_per_sample"] for r in side) / len(side) / threads
        rows.append({"model": name, "together": together["ms_per_sample"],
                     "alone": alone["ms_per_sample"],
                     "side_by_side": [r["ms_per_sample"] for r in side],
                     "ratio": together["ms_per_sample"] / per_sample})
    print(f"\nms per training sample (1 epoch of {args.samples} scenes)")
    print(f"| model | 1 process, {threads} threads | 1 process, 1 thread | "
          f"{threads} processes side by side (each) | throughput of the processes / "
          f"1 process on {threads} threads |\n|---|---:|---:|---|---:|")
    for r in rows:
        each = ", ".join(f"{v:.2f}" for v in r["side_by_side"])
        print(f"| {r['model']} | {r['together']:.2f} | {r['alone']:.2f} | {each} | "
              f"{r['ratio']:.2f}x |")
    return {"threads": threads, "matmul": rates, "training": rows}


if __name__ == "__main__":
    main()
