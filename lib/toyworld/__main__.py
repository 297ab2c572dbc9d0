"""Command line: ``python -m lib.toyworld build --preset toy --seed 0 [--out DIR] [--force]``."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.toyworld",
                                     description="Build the simulated NSD ('toy world').")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or reuse) a toy world and its models")
    b.add_argument("--preset", default="toy", choices=["toy", "micro"])
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default=None,
                   help="output folder (default: <data root>/<preset>, data root = "
                        "$BRAINCAP_DATA or ./data)")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .build import build

    t = time.perf_counter()
    out = build(preset=args.preset, seed=args.seed, out=args.out, force=args.force)
    print(f"[toyworld] {args.preset} (seed {args.seed}) ready in {out} "
          f"({time.perf_counter() - t:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
