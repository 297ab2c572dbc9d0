"""Command line:
``python -m lib.toyworld build --preset toy --seed 0 [--subjects N] [--null] [--out DIR]``.

``--null`` builds the null world (the same world, brain responses unrelated to the images;
default folder ``<data root>/<preset>_null``), linking the normal world's models if they
exist. ``--force`` rebuilds even if cached.
"""

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
    b.add_argument("--subjects", type=int, default=None, metavar="N",
                   help="number of subjects (default: the preset's, 2); list them in the "
                        "parameter file's subjects: to run the book for each")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.add_argument("--null", action="store_true",
                   help="build the null world: same stimuli, design, voxels and noise, but "
                        "responses that carry no information about the images "
                        "(default folder <data root>/<preset>_null)")
    b.add_argument("--models-from", default=None,
                   help="with --null: a normal world's folder whose models are linked instead "
                        "of retrained (default: <out>/../<preset> or <data root>/<preset>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .build import build

    t = time.perf_counter()
    out = build(preset=args.preset, seed=args.seed, out=args.out, force=args.force,
                null=args.null, models_from=args.models_from, n_subjects=args.subjects)
    kind = " null world" if args.null else ""
    print(f"[toyworld] {args.preset}{kind} (seed {args.seed}) ready in {out} "
          f"({time.perf_counter() - t:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
