"""Benchmark: the book's job graph with more subjects and more Dask workers.

For each number of subjects (the toy world built with that many, ``--subjects N``; its models,
which do not depend on the subjects, are the preset's own) and each number of workers, the chosen
chapters (default 01-05 and 07) run for every subject into a fresh output and derived folder;
1 worker is the serial run of ``make book``, more workers a Dask LocalCluster with one
single-threaded worker each. The table gives wall time and speed-up over the serial run with the
same subjects, with the machine's cores and float32 matmul throughput measured in the same run,
so figures compare across machines.

Run: ``python -m bench scaling -- --preset micro --subjects 1 2 4 --workers 1 2``
(``--chapters 01_data_preparation 03_alignment_ridge`` for preparation and stage 1 only).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = ["01_data_preparation", "02_convergence", "03_alignment_ridge", "04_contrastive",
             "05_captioning", "07_across_subjects"]


def run_once(preset: str, n_subjects: int, workers: int, scratch: Path,
             chapters: list[str]) -> float:
    """Wall time of the graph for ``n_subjects`` on ``workers`` (1: serial)."""
    from lib import run
    from lib.toyworld import build

    build(preset=preset, seed=0)  # the preset's world and models (reused when up to date)
    world = REPO / "data" / "bench" / f"{preset}_{n_subjects}subj"
    build(preset=preset, seed=0, out=world, n_subjects=n_subjects, models=False)
    params = run.load_params(REPO / "notebooks" / "params" / f"{preset}.yaml")
    rel = os.path.relpath(world, REPO)
    out = scratch / f"{n_subjects}subj_{workers}w"
    params.update(
        notebooks=chapters, subjects=list(range(1, n_subjects + 1)), subject=1, sweeps={},
        runs=["stage1", "stage2"], toy_root=rel, nsd_root=f"{rel}/nsd",
        category_lexicon=f"{rel}/truth/lexicon.json", derived_root=str(out / "derived"),
        stage2_head_only_control=False)
    path = out / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params))
    start = time.perf_counter()
    if workers == 1:
        run.run_book(path, out / "run", cwd=REPO, log=lambda s: None)
    else:
        from distributed import LocalCluster

        with LocalCluster(n_workers=workers, threads_per_worker=1,
                          dashboard_address=":0") as cluster:
            run.run_book(path, out / "run", cwd=REPO, log=lambda s: None,
                         scheduler=cluster.scheduler_address)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench scaling", description=__doc__)
    parser.add_argument("--preset", default="micro", choices=["micro", "toy"])
    parser.add_argument("--subjects", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--chapters", nargs="+", default=NOTEBOOKS)
    args = parser.parse_args(argv)
    from bench.bench_ridge import matmul_gflops

    print(f"machine: {os.cpu_count()} cores, float32 matmul torch {matmul_gflops(n=2048):.0f}, "
          f"numpy {matmul_gflops(n=2048, lib='numpy'):.0f} GFLOP/s; "
          f"preset {args.preset}, chapters {', '.join(args.chapters)}", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    rows = []
    try:
        for n in args.subjects:
            serial = None
            for w in args.workers:
                seconds = run_once(args.preset, n, w, scratch, args.chapters)
                serial = seconds if w == 1 else serial
                speedup = f"{serial / seconds:.2f}x" if serial else "-"
                rows.append((n, w, seconds, speedup))
                print(f"  {n} subject(s), {w} worker(s): {seconds:7.1f} s  speed-up {speedup}",
                      flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n| subjects | workers | wall time (s) | speed-up vs 1 worker |\n|---|---|---|---|")
    for n, w, s, x in rows:
        print(f"| {n} | {w} | {s:.1f} | {x} |")


if __name__ == "__main__":
    main()
