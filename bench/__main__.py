"""Run benchmarks: ``python -m bench`` (every ``bench_*.py`` module in turn) or
``python -m bench NAME [NAME ...] [-- ARGS...]`` (NAME is e.g. ``ridge`` or ``bench_ridge``;
``book`` times every phase of ``make book``).

Arguments that are not benchmark names (``--quick``, ...) are passed to each selected
benchmark's ``main``; when running all of them, a benchmark that rejects an argument is
reported and skipped.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names (without the ``bench_`` prefix) of the benchmark modules, sorted."""
    return sorted(p.stem[len("bench_") :] for p in HERE.glob("bench_*.py"))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("available:", ", ".join(available()))
        return 0
    names, rest = [], []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1 :]
    known = set(available())
    for a in argv:
        key = a[len("bench_") :] if a.startswith("bench_") else a
        key = key[:-3] if key.endswith(".py") else key
        (names if key in known else rest).append(key if key in known else a)
    selected = names or available()
    failures = 0
    for name in selected:
        print(f"\n=== bench_{name} {' '.join(rest)} ===", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.bench_{name}")
            module.main(rest)
        except SystemExit as exc:  # argparse rejected an argument
            if exc.code not in (0, None):
                failures += 1
                print(f"bench_{name}: exited with {exc.code}", file=sys.stderr)
        except Exception:  # keep going with the other benchmarks
            failures += 1
            traceback.print_exc()
        print(f"=== bench_{name} done in {time.perf_counter() - t0:.1f} s ===", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
