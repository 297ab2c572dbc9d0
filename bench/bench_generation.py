"""Benchmark: batched caption generation versus the original one-caption-at-a-time loop.

The original study wrote one caption per ``generate`` call in a Python loop over test images.
:func:`lib.decoding.generate.generate_captions` batches the same computation (identical greedy
captions, tested). Both run here in the same process on the same query tokens (true Q-Former
outputs of freshly rendered toy scenes, so the captions are realistic), on the toy BLIP-2
(``data/toy/models/blip2-toy-opt``) on CPU by default; ``--device cuda`` runs the same code on a
GPU (bf16 language model) with e.g. ``--model Salesforce/blip2-opt-2.7b``.

Run: ``python -m bench generation [--n 64] [--batch-size 32] [--device cpu] [--quick]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "data" / "toy" / "models" / "blip2-toy-opt"


def _query_tokens(model_path, n: int, device: str, seed: int = 0) -> np.ndarray:
    from lib.features.qformer import load_qformer_encoder, qformer_features
    from lib.toyworld.scenes import render_scene, sample_scenes

    encoder, image_processor = load_qformer_encoder(model_path, device=device)
    scenes = sample_scenes(n, np.random.default_rng(seed + 12345))
    images = np.stack([render_scene(s, size=64) for s in scenes])  # the processor resizes
    return qformer_features(images, encoder, image_processor, batch_size=32)


def _time(fn, repeats: int = 1):
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> dict:
    """Run the benchmark and print a table; returns the measurements."""
    import torch

    from lib.decoding.generate import generate_captions, load_captioner

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="BLIP-2 checkpoint")
    parser.add_argument("--n", type=int, default=64, help="captions to write")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--quick", action="store_true", help="16 captions")
    parser.add_argument("--out", default=None, help="write the measurements to this JSON file")
    args, _ = parser.parse_known_args(argv)
    if args.quick:
        args.n = 16
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.model).exists() and args.model == str(DEFAULT_MODEL):
        raise FileNotFoundError(
            f"{args.model} not found: build the toy world first "
            "(python -m lib.toyworld build --preset toy --seed 0) or pass --model."
        )
    q = _query_tokens(args.model, args.n, args.device)
    model, processor = load_captioner(args.model, device=args.device)
    kw = {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens, "progress": False}
    generate_captions(q[:2], model, processor, batch_size=2, **kw)  # warm-up

    def loop():
        return [generate_captions(q[i : i + 1], model, processor, batch_size=1, **kw)[0]
                for i in range(len(q))]

    t_loop, caps_loop = _time(loop)
    t_batch, caps_batch = _time(lambda: generate_captions(q, model, processor,
                                                          batch_size=args.batch_size, **kw))
    same = caps_loop == caps_batch
    res = {
        "device": args.device, "model": args.model, "n": args.n, "batch_size": args.batch_size,
        "num_beams": args.num_beams, "threads": torch.get_num_threads(),
        "one_at_a_time_s": t_loop, "batched_s": t_batch,
        "one_at_a_time_captions_per_s": args.n / t_loop, "batched_captions_per_s": args.n / t_batch,
        "speedup": t_loop / t_batch, "identical_captions": same,
    }
    print(f"bench_generation: {args.n} captions, {args.model} on {args.device} "
          f"({res['threads']} threads), beams={args.num_beams}")
    print(f"{'approach':<28}{'seconds':>10}{'captions/s':>12}")
    print(f"{'one at a time (original)':<28}{t_loop:>10.2f}"
          f"{res['one_at_a_time_captions_per_s']:>12.1f}")
    print(f"{f'batched ({args.batch_size})':<28}{t_batch:>10.2f}"
          f"{res['batched_captions_per_s']:>12.1f}")
    print(f"speed-up x{res['speedup']:.1f}; identical captions: {same}")
    if args.out:
        from lib.io import write_json

        write_json(args.out, res)
    return res


if __name__ == "__main__":
    main()
