"""Stage 2 at real size: one training step of the contrastive model with random weights.

Architecture of the original study: a brain map from 15,724 nsdgeneral voxels (subject 1) to
32 x 768 query tokens (386 M parameters), the ``Salesforce/blip2-itm-vit-g`` Q-Former
(12 layers, hidden 768, image-text dim 256; random weights, built from its config, no
download), captions of 64 tokens, batch 32, AdamW, bf16 autocast on CUDA.

Usage::

    python bench/bench_stage2_step.py                 # CUDA if available
    python bench/bench_stage2_step.py --device cpu --voxels 2000 --steps 2   # quick CPU check

Prints the step time (median of the timed steps after one warm-up step) and, on CUDA, the
peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def build(voxels: int, n_query: int = 32, hidden: int = 768, dim: int = 256, seed: int = 0):
    from transformers import (
        Blip2Config,
        Blip2ForImageTextRetrieval,
        Blip2QFormerConfig,
        Blip2VisionConfig,
    )

    from lib.decoding.contrastive import BrainTextContrastive
    from lib.decoding.decoder import QueryTokenDecoder

    # the vision encoder is not used by stage 2: a 1-layer stand-in keeps construction cheap;
    # the Q-Former is the real blip2-itm-vit-g one (encoder_hidden_size 1408).
    vision = Blip2VisionConfig(hidden_size=1408, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=16, image_size=28, patch_size=14)
    qformer = Blip2QFormerConfig(hidden_size=hidden, num_hidden_layers=12,
                                 num_attention_heads=12, intermediate_size=3072,
                                 encoder_hidden_size=1408, use_qformer_text_input=True,
                                 vocab_size=30523, max_position_embeddings=512)
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                         num_query_tokens=n_query, image_text_hidden_size=dim)
    torch.manual_seed(seed)
    itm = Blip2ForImageTextRetrieval(config).eval()
    decoder = QueryTokenDecoder([voxels], n_query, hidden)
    with torch.no_grad():
        decoder.weight.normal_(0, 0.01)
    return BrainTextContrastive(decoder, itm, train_itm=False)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--voxels", type=int, default=15724)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--train-itm", action="store_true",
                        help="also fine-tune the Q-Former text path (as the original did)")
    args = parser.parse_args(argv)

    from lib.config import resolve_device

    dev = resolve_device(args.device)
    model = build(args.voxels)
    if args.train_itm:
        model.train_itm = True
        for m in model.itm_modules():
            m.requires_grad_(True)
    model.to(dev).train()
    opt = torch.optim.AdamW(model.param_groups(1e-4), lr=1e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(args.batch, args.voxels, generator=g).to(dev)
    tokens = torch.randn(args.batch, 32, 768, generator=g).to(dev)
    ids = torch.randint(0, args.batch // 2, (args.batch,), generator=g).to(dev)
    input_ids = torch.randint(1000, 30000, (args.batch, args.seq), generator=g).to(dev)
    mask = torch.ones_like(input_ids)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.steps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            out = model(X, tokens, ids, input_ids=input_ids, attention_mask=mask)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step is a warm-up
            times.append(time.perf_counter() - t0)
    n_params = sum(p.numel() for g_ in model.param_groups(1.0) for p in g_["params"])
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "voxels": args.voxels, "batch": args.batch, "seq": args.seq,
        "trainable_params": n_params, "train_itm": args.train_itm,
        "step_s_median": sorted(times)[len(times) // 2], "loss": float(out.loss.detach()),
        "peak_gpu_memory_gib": (torch.cuda.max_memory_allocated(dev) / 2**30
                                if dev.type == "cuda" else None),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
