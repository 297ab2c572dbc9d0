"""Benchmark: where the time of ``make book`` goes, phase by phase, with the machine's speed.

Runs what ``make book`` runs after its set-up, each part in a fresh subprocess, and records
wall time and CPU time (user + system of the subprocess and everything it waited for) per phase:

- ``toyworld``: ``python -m lib.toyworld build --preset P --seed S --force`` (a fresh build),
  broken into the phases the build records itself in ``BUILD.json``
  (:mod:`lib.toyworld.timing`): each world step, the models' corpus, each BLIP-2 step, each
  zoo model;
- ``notebooks``: the job graph of ``notebooks/params/<P>.yaml`` as ``make book`` runs it,
  ``python -m lib.run --scheduler local`` (a row for the graph, sub-rows with lib.run's wall
  time of each job; jobs overlap); with ``--scheduler serial`` each notebook through
  ``python -m lib.run --only NAME`` instead, one after another (a row each, sweep runs as
  sub-rows);
- ``jupyter-book``: ``jupyter-book build . --quiet``.

The float32 matmul throughput of torch and of numpy (4096^3, best of 3) and the load average
are measured in the same run, before and after, so tables from different machines compare
(a phase's CPU seconds times the GFLOP/s ratio of two machines predicts its cost on the other).
The set-up (virtualenv, pip) is not timed.

Run: ``python -m bench book [--preset micro|toy] [--phases toyworld,notebooks,jupyter-book]
[--scheduler local|serial] [--seed 0] [--out DIR] [--json FILE]``;
``python -m bench book --compare BUILD_A BUILD_B`` prints two finished builds' scientific
outputs (:func:`science`) and phase times side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHASES = ("toyworld", "notebooks", "jupyter-book")


# ----------------------------------------------------------------------------- machine
def machine(n: int = 4096) -> dict:
    """CPU model, core count, torch threads, load average and both matmul throughputs.

    ``n``: size of the square float32 products (``n^3`` multiply-adds, best of 3).
    """
    import torch

    from bench.bench_ridge import matmul_gflops
    from lib.resources import cpu_info

    cpu = cpu_info()["model_name"] or platform.machine()
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "torch_matmul_gflops": round(matmul_gflops("cpu", n=n), 1),
            "numpy_matmul_gflops": round(matmul_gflops(n=n, lib="numpy"), 1), "matmul_n": n}


# ----------------------------------------------------------------------------- timing
def run_timed(cmd: list[str], env: dict | None = None) -> tuple[dict, str]:
    """Run ``cmd`` in the repository root; return ``{"wall_s", "cpu_s"}`` and its stdout.

    CPU time is the user + system time of the subprocess and of every process it waited for
    (``RUSAGE_CHILDREN``). Raises ``RuntimeError`` with the output's tail if it fails.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=REPO, env={**os.environ, **(env or {})},
                          text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}, proc.stdout


def toyworld_rows(preset: str, seed: int, out: Path) -> list[dict]:
    """Build the toy world afresh; one row for the build, then one per recorded phase."""
    times, _ = run_timed([sys.executable, "-m", "lib.toyworld", "build", "--preset", preset,
                          "--seed", str(seed), "--out", str(out), "--force"])
    print(f"toy world build: {times['wall_s']:.1f} s wall, {times['cpu_s']:.1f} s CPU", flush=True)
    return [{"phase": f"toy world build ({preset}, seed {seed})", **times}] + build_rows(out)


def build_rows(out: Path) -> list[dict]:
    """The phases a toy build recorded in ``out/BUILD.json`` (world steps, then models).

    Builds made before :mod:`lib.toyworld.timing` recorded wall seconds only (world steps;
    the models' ``seconds``): their rows have ``cpu_s`` None.
    """
    stamp = json.loads((Path(out) / "BUILD.json").read_text())
    models = stamp.get("models") or {}
    groups = {"world": stamp.get("world_timings") or {},
              "models": models.get("phases") or {k: v for k, v in
                                                 (models.get("seconds") or {}).items()
                                                 if k != "total"}}
    return [{"phase": f"  {group}: {k}",
             **(v if isinstance(v, dict) else {"wall_s": float(v), "cpu_s": None})}
            for group, phases in groups.items() for k, v in phases.items()]


_DONE = re.compile(r"^\[\d+/\d+\] (.+) done in ([\d.]+) s")


def notebook_rows(params: Path, output_dir: Path, scheduler: str = "local") -> list[dict]:
    """Run the notebooks of ``params`` with lib.run: the whole graph, or one notebook at a time.

    ``scheduler="local"`` (as ``make book``): one ``lib.run --scheduler local`` run, a row for
    it and a sub-row per job (lib.run's wall time; jobs overlap). ``"serial"``: one
    ``lib.run --only NAME`` per notebook, a row each (sweep runs as sub-rows).
    """
    from lib.run import load_params

    base = [sys.executable, "-m", "lib.run", "--params", str(params),
            "--output-dir", str(output_dir)]
    if scheduler != "serial":
        times, stdout = run_timed(base + ["--scheduler", scheduler])
        print(f"notebooks ({scheduler}): {times['wall_s']:.1f} s wall, {times['cpu_s']:.1f} s "
              "CPU", flush=True)
        return [{"phase": f"notebooks (scheduler {scheduler})", **times}] + _job_rows(stdout)
    names = [str(n).removesuffix(".ipynb") for n in load_params(params)["notebooks"]]
    rows = []
    for name in names:
        times, stdout = run_timed(base + ["--only", name])
        rows.append({"phase": f"notebook {name}", **times})
        print(f"notebook {name}: {times['wall_s']:.1f} s wall, {times['cpu_s']:.1f} s CPU",
              flush=True)
        jobs = _job_rows(stdout)
        if len(jobs) > 1:  # a sweep
            rows += jobs
    return rows


def _job_rows(stdout: str) -> list[dict]:
    """Sub-rows from lib.run's ``[i/n] LABEL done in S s`` lines (wall time, no CPU)."""
    return [{"phase": f"  {label}", "wall_s": float(s), "cpu_s": None}
            for label, s in (m.groups() for m in map(_DONE.match, stdout.splitlines()) if m)]


def jupyter_book_rows() -> list[dict]:
    """``jupyter-book build . --quiet`` (what ``make book`` runs last)."""
    exe = Path(sys.executable).with_name("jupyter-book")
    times, _ = run_timed([str(exe) if exe.exists() else "jupyter-book", "build", ".", "--quiet"])
    return [{"phase": "jupyter-book build", **times}]


def science(out: Path) -> dict:
    """The scientific outputs a toy build reports, flat: ``{quantity: value}``.

    World: the measured noise ceiling (median and mean over nsdgeneral, per subject;
    ``truth/WORLD.json``). Models (``models/TRAINING.json``): the captioner's BLEU-4 and
    CIDEr and the retrieval model's top-1 on held-out scenes (with chance), each zoo
    model's held-out loss and mAP (vision) or perplexity (language).
    """
    out = Path(out)
    values: dict = {}
    world = json.loads((out / "truth" / "WORLD.json").read_text())
    for subj, table in world.get("subjects", {}).items():
        for stat in ("median", "mean"):
            values[f"noise ceiling {subj} nsdgeneral {stat}"] = table["nsdgeneral"][stat]
    training = out / "models" / "TRAINING.json"
    quality = json.loads(training.read_text()).get("quality", {}) if training.exists() else {}
    for key in ("BLEU-4", "CIDEr", "image_to_text_top1", "text_to_image_top1", "chance",
                "image_to_any_caption_top1"):
        if key in quality.get("blip2", {}):
            values[f"blip2 {key}"] = quality["blip2"][key]
    for name, q in quality.items():
        for key in ("val_loss", "val_mAP", "val_perplexity"):
            if name != "blip2" and key in q:
                values[f"{name} {key}"] = q[key]
    return values


def _time_cell(row: dict | None) -> str:
    if row is None:
        return ""
    cpu = "" if row.get("cpu_s") is None else f", {row['cpu_s']:.1f} s CPU"
    return f"{row['wall_s']:.1f} s wall{cpu}"


def _machine(out: Path) -> dict:
    """``BUILD.json``'s ``machine`` (CPU, numpy and torch versions), {} for older builds."""
    return json.loads((Path(out) / "BUILD.json").read_text()).get("machine", {})


def compare(a: Path, b: Path) -> str:
    """Markdown table of two builds side by side: the machines, the science, then wall / CPU
    time per phase (builds agree bit for bit only on the same CPU and libraries)."""
    ma, mb = _machine(a), _machine(b)
    lines = [f"| quantity | {a} | {b} |", "|---|---:|---:|"]
    lines += [f"| machine: {k} | {ma.get(k, '')} | {mb.get(k, '')} |"
              for k in dict.fromkeys([*ma, *mb])]
    sa, sb = science(a), science(b)
    lines += [f"| {k} | {sa.get(k, float('nan')):.4f} | {sb.get(k, float('nan')):.4f} |"
              for k in dict.fromkeys([*sa, *sb])]
    ra = {r["phase"]: r for r in build_rows(a)}
    rb = {r["phase"]: r for r in build_rows(b)}
    for k in dict.fromkeys([*ra, *rb]):
        cell = [_time_cell(r.get(k)) for r in (ra, rb)]
        lines.append(f"| {k.strip()} | {cell[0]} | {cell[1]} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report
def table(rows: list[dict]) -> str:
    """Markdown table: phase, wall s, CPU s, CPU / wall."""
    lines = ["| phase | wall s | CPU s | CPU/wall |", "|---|---:|---:|---:|"]
    for r in rows:
        cpu = r.get("cpu_s")
        ratio = f"{cpu / r['wall_s']:.2f}" if cpu is not None and r["wall_s"] > 0 else ""
        lines.append(f"| {r['phase']} | {r['wall_s']:.1f} | "
                     f"{'' if cpu is None else f'{cpu:.1f}'} | {ratio} |")
    return "\n".join(lines)


def _machine_line(m: dict) -> str:
    return (f"float32 matmul ({m['matmul_n']}^3) torch {m['torch_matmul_gflops']:.0f} GFLOP/s, "
            f"numpy {m['numpy_matmul_gflops']:.0f} GFLOP/s; load average "
            f"{' '.join(f'{x:.2f}' for x in m['load_average'])}")


def main(argv=None) -> dict:
    """Time the selected phases of ``make book``, print the table; returns the measurements."""
    parser = argparse.ArgumentParser(prog="python -m bench book",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="micro", choices=["micro", "toy"])
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated, any of {', '.join(PHASES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="toy world folder (default: <data root>/<preset>, where the "
                             "notebooks of the preset read it)")
    parser.add_argument("--params", default=None,
                        help="parameter file (default notebooks/params/<preset>.yaml)")
    parser.add_argument("--output-dir", default=None,
                        help="executed notebooks (default: a temporary folder; book/run with "
                             "the jupyter-book phase, as make book)")
    parser.add_argument("--scheduler", default="local", choices=["local", "serial"],
                        help="notebooks as make book runs them (local: a Dask LocalCluster) "
                             "or one notebook after another, a row each (serial)")
    parser.add_argument("--json", default=None, help="write the measurements to this JSON file")
    parser.add_argument("--matmul-n", type=int, default=4096,
                        help="size of the matmul probe (4096 as bench ridge; 2048 is 8x "
                             "cheaper on a loaded machine)")
    parser.add_argument("--compare", nargs=2, metavar=("BUILD_A", "BUILD_B"), default=None,
                        help="print two finished toy builds side by side (science and time "
                             "per phase) and run nothing")
    args, _ = parser.parse_known_args(argv)
    if args.compare:
        text = compare(*map(Path, args.compare))
        print(text)
        return {"compare": text}
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise SystemExit(f"--phases: unknown {unknown}; choose from {', '.join(PHASES)}")

    from lib.toyworld.build import default_out

    out = Path(args.out).resolve() if args.out else default_out(args.preset)
    params = Path(args.params or REPO / "notebooks" / "params" / f"{args.preset}.yaml")
    before = machine(args.matmul_n)
    print(f"{before['cpu']}, {before['cpus']} CPUs, torch threads {before['torch_threads']}",
          flush=True)
    print("before: " + _machine_line(before), flush=True)
    rows: list[dict] = []
    if "toyworld" in phases:
        rows += toyworld_rows(args.preset, args.seed, out)
    if "notebooks" in phases:
        if args.output_dir:
            rows += notebook_rows(params, Path(args.output_dir), args.scheduler)
        elif "jupyter-book" in phases:
            rows += notebook_rows(params, REPO / "book" / "run", args.scheduler)
        else:
            with tempfile.TemporaryDirectory(prefix="bench_book_") as tmp:
                rows += notebook_rows(params, Path(tmp), args.scheduler)
    if "jupyter-book" in phases:
        rows += jupyter_book_rows()
    after = machine(args.matmul_n)
    top = [r for r in rows if not r["phase"].startswith(" ")]
    total = {"phase": "total", "wall_s": sum(r["wall_s"] for r in top),
             "cpu_s": sum(r["cpu_s"] for r in top)}
    print(table(rows + [total]))
    print("after: " + _machine_line(after))
    result = {"preset": args.preset, "seed": args.seed, "phases": phases,
              "scheduler": args.scheduler, "rows": rows,
              "total": total, "machine_before": before, "machine_after": after}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
