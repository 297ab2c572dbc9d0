"""Benchmark: lib.ridge.RidgeCV against scikit-learn, himalaya and the original per-channel loop.

(a) ``3000 x 4000 -> 2000 targets, 7 alphas, one alpha per target``: lib.ridge (exact
    leave-one-out, and 5-fold) versus scikit-learn ``RidgeCV(alpha_per_target=True)``
    (efficient LOO, same criterion as ours) and himalaya ``KernelRidgeCV`` (torch backend,
    5-fold): fit time, share of chosen alphas equal to scikit-learn's (to himalaya's for
    the 5-fold row), mean test Pearson r and R^2.
(b) decoding scale ``8859 x 15724 -> 24576 targets, 7 alphas`` (NSD subject 1, stage 1):
    wall time, phase times and peak resident memory (``ru_maxrss`` of a fresh
    subprocess, data included) of lib.ridge; achieved GFLOP/s of its matrix products
    against this machine's float32 matmul throughput measured in the same run; and the
    original study's loop (scikit-learn ``Ridge`` fit once per output channel and per
    alpha) timed on a few (channel, alpha) fits and extrapolated to all of them.

Run: ``python -m bench ridge [--quick] [--parts a,b] [--device cpu|cuda] [--out FILE.json]``.
Synthetic data: features with a decaying spectrum, targets linear in them with a range
of signal-to-noise ratios (so that different targets want different alphas).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
ALPHAS_A = np.logspace(0, 6, 7)
ALPHAS_B = np.logspace(1, 7, 7)
SIZES = {
    "a": {"full": (3000, 4000, 2000), "quick": (600, 800, 400)},
    "b": {"full": (8859, 15724, 24576), "quick": (1500, 2600, 4096)},
}


# ----------------------------------------------------------------------------- data
def _data_a(n, p, t, n_test, seed=0):
    rng = np.random.default_rng(seed)
    scales = (1.0 / np.sqrt(1.0 + np.arange(p) / 50.0)).astype(np.float32)
    X = rng.standard_normal((n + n_test, p), dtype=np.float32) * scales
    B = rng.standard_normal((p, t), dtype=np.float32) / np.sqrt((scales**2).sum())
    snr = np.geomspace(0.05, 3.0, t).astype(np.float32)  # signal sd / noise sd
    Y = (X @ B) * snr + rng.standard_normal((n + n_test, t), dtype=np.float32)
    return X[:n], Y[:n], X[n:], Y[n:]


def _data_b(n, p, t, seed=0):
    """Decoding-scale data, generated without an (n x p x t) product: targets depend on
    64 latent features."""
    import torch

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=g)
    B = torch.randn(64, t, generator=g) / 8.0
    snr = torch.logspace(-2, 0.5, t)
    Y = torch.randn(n, t, generator=g)
    Y.addmm_(X[:, :64], B * snr)  # in place: peak memory is X and Y only
    return X.numpy(), Y.numpy()


# ----------------------------------------------------------------------------- helpers
def matmul_gflops(device: str = "cpu", n: int = 4096, repeats: int = 3,
                  lib: str = "torch") -> float:
    """Measured float32 matmul throughput (best of ``repeats``) in GFLOP/s, of torch on
    ``device`` or (``lib="numpy"``) of NumPy."""
    import torch

    if lib == "numpy":
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        sync = None
    else:
        dev = torch.device(device)
        a, b = (torch.randn(n, n, device=dev) for _ in range(2))
        sync = torch.cuda.synchronize if dev.type == "cuda" else None
    a @ b
    best = np.inf
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        a @ b
        if sync:
            sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"
    except OSError:
        return "load average unavailable"


def ridge_flops(n, p, t, r, n_alphas, form="dual", solver="eigen") -> dict:
    """Floating-point operations of lib.ridge's matrix products (nominal counts; the
    eigendecomposition, if any, is not counted)."""
    gram = 2 * n * n * p if form == "dual" else 2 * n * p * p
    if solver == "cholesky":  # per alpha: potrf n^3/3 + diag(G^-1) n^3/3, G^-1 Y 2n^2 t
        return {"gram": gram, "factor": n_alphas * 2 * n**3 // 3, "loo": 2 * n * n * t * n_alphas,
                "coef": 2 * n * p * t}
    # one alpha per target: the dual form refits from the dual coefficients its LOO kept
    # (Xc^T A); the primal form forms U = Xc V / sqrt(s), then refits through V diag(sqrt s)
    if form == "dual":
        return {"gram": gram, "targets": 2 * n * r * t, "loo": 2 * n * r * t * n_alphas,
                "coef": 2 * n * p * t}
    return {"gram": gram, "project": 2 * n * p * r, "targets": 2 * n * r * t,
            "loo": 2 * n * r * t * n_alphas, "coef": 2 * p * r * t}


def _table(rows, cols):
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)))


# ----------------------------------------------------------------------------- part (a)
SK, HIM, OURS = ("scikit-learn RidgeCV (LOO)", "himalaya KernelRidgeCV (5-fold)",
                 "lib.ridge RidgeCV (LOO)")


def _himalaya_fit(X, Y, device: str, backend_name: str):
    """himalaya's KernelRidgeCV (5-fold) on its backend of the same name as ours."""
    import torch
    from himalaya.backend import set_backend
    from himalaya.kernel_ridge import KernelRidgeCV

    backend = set_backend(backend_name, on_error="raise")
    m = KernelRidgeCV(alphas=ALPHAS_A, fit_intercept=True, cv=5, warn=False).fit(X, Y)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    set_backend("numpy")
    return m, backend


def _round_a(X, Y, Xt, device: str, backend: str, other: str | None) -> dict:
    """One round of fits: {label: (seconds, predictions, alphas, fit_info or None)}."""
    from sklearn.linear_model import RidgeCV as SkRidgeCV

    from lib.ridge import RidgeCV

    out = {}
    sec, sk = _timed(lambda: SkRidgeCV(alphas=ALPHAS_A, alpha_per_target=True).fit(X, Y))
    out[SK] = (sec, sk.predict(Xt), sk.alpha_, None)
    print(f"    {SK}: {sec:.2f} s; {_load()}", flush=True)
    try:
        sec, (him, hb) = _timed(lambda: _himalaya_fit(X, Y, device, backend))
        out[HIM + f" [{backend}]"] = (sec, hb.to_numpy(him.predict(Xt)),
                                      hb.to_numpy(him.best_alphas_), None)
        print(f"    {HIM} [{backend}]: {sec:.2f} s", flush=True)
    except ImportError as exc:  # pragma: no cover - optional dependency
        print(f"himalaya unavailable ({exc}); skipped")
    runs = [("loo", "auto", backend, OURS), ("loo", "eigen", backend, OURS + " eigen"),
            (5, "auto", backend, "lib.ridge RidgeCV (5-fold)")]
    if other:
        runs.insert(1, ("loo", "auto", other, OURS + f" on {other}"))
    for cv, solver, bk, label in runs:
        model = RidgeCV(alphas=ALPHAS_A, cv=cv, device=device, solver=solver, backend=bk,
                        warn_edge=None)
        sec, m = _timed(lambda model=model: model.fit(X, Y))
        out[label] = (sec, m.predict(Xt), m.best_alphas_, m.fit_info_)
        print(f"    {label} [{m.backend_}, {m.fit_info_['solver']}]: {sec:.2f} s; phases "
              + ", ".join(f"{k} {v:.2f}" for k, v in m.fit_info_["phase_s"].items()), flush=True)
    return out


def _rows_a(rounds: list, Yt) -> tuple[list, dict]:
    from lib.scoring import pearson_r, r2_score

    last = rounds[-1]
    him = next((k for k in last if k.startswith(HIM)), None)
    res, rows = {}, []
    for name, (_, pred, alphas, info) in last.items():
        against = him if ("5-fold" in name and name.startswith("lib") and him) else SK
        times = [rnd[name][0] for rnd in rounds]
        r = res[name] = {
            "time_s": float(np.median(times)), "times_s": times,
            "same_alpha_share": float(np.mean(np.isclose(alphas, last[against][2], rtol=1e-4))),
            "compared_with": against, "test_r": float(np.nanmean(pearson_r(Yt, pred))),
            "test_r2": float(np.nanmean(r2_score(Yt, pred))),
            "solver": info and info["solver"], "backend": info and info["backend"],
            "phase_s": info and info["phase_s"]}
        tag = f" [{r['backend']}, {r['solver']}]" if info else ""
        rows.append({"method": name + tag, "fit s": f"{r['time_s']:.2f}",
                     "rounds": " ".join(f"{v:.1f}" for v in times),
                     "same alpha": f"{r['same_alpha_share']:.1%} vs "
                                   f"{'himalaya' if against == him else 'sklearn'}",
                     "test r": f"{r['test_r']:.4f}", "test R2": f"{r['test_r2']:.4f}"})
    return rows, res


def part_a(quick: bool, device: str, repeat: int = 1) -> dict:
    """Part (a): lib.ridge against scikit-learn and himalaya, ``repeat`` rounds."""
    from lib.ridge import eigh_library, probe_blas
    from lib.ridge.backends import resolve_backend_name
    from lib.ridge.machine import probe_torch_eigh

    n, p, t = SIZES["a"]["quick" if quick else "full"]
    X, Y, Xt, Yt = _data_a(n, p, t, n_test=max(200, n // 6))
    # lib.ridge's two one-time probes (cached per process) run here, outside the timed fits
    probe = probe_blas()
    probe_s, eigh_threads = _timed(probe_torch_eigh)
    backend = resolve_backend_name("auto", device)
    other = {"numpy": "torch", "torch": "numpy"}.get(backend)
    print(f"\n(a) {n} x {p} -> {t} targets, {len(ALPHAS_A)} alphas, alpha per target; {_load()}")
    print(f"float32 matmul (lib.ridge probe, 1024^3): numpy {probe['numpy']:.0f} GFLOP/s, "
          f"torch {probe['torch']:.0f} GFLOP/s; backend that ran: {backend} "
          f"(himalaya runs on its backend of the same name)"
          + (f"; its eigensolver: {eigh_library()}" if backend == "numpy" else ""), flush=True)
    import torch

    threads = "one thread" if eigh_threads == 1 or torch.get_num_threads() == 1 else "all threads"
    print(f"torch's eigensolver on {threads} (thread probe {probe_s:.2f} s, once per process, "
          "before the timed fits, as the BLAS probe)", flush=True)
    rounds = []
    for i in range(repeat):
        rounds.append(_round_a(X, Y, Xt, device, backend, other))
        print(f"  round {i + 1}/{repeat} done; {_load()}", flush=True)
    rows, res = _rows_a(rounds, Yt)
    _table(rows, ["method", "fit s", "rounds", "same alpha", "test r", "test R2"])
    speedups = [min(v[0] for k, v in rnd.items() if not k.startswith("lib")) / rnd[OURS][0]
                for rnd in rounds]
    print("phases of lib.ridge (LOO), last round: "
          + ", ".join(f"{k} {v:.2f}s" for k, v in res[OURS]["phase_s"].items()))
    print("speed-up of lib.ridge (LOO) over the fastest alternative, same round: "
          + ", ".join(f"{v:.2f}x" for v in speedups)
          + f" (median {np.median(speedups):.2f}x; target >= 3x: "
          + ("met)" if np.median(speedups) >= 3 else "NOT met)"))
    return {"sizes": [n, p, t], "results": res, "speedups": speedups,
            "speedup_vs_fastest_alternative": float(np.median(speedups)), "blas_probe": probe,
            "eigh_probe": {"threads": eigh_threads, "seconds": probe_s},
            "backend": backend, "load": _load()}


# ----------------------------------------------------------------------------- part (b)
def _worker(kind: str, n: int, p: int, t: int, device: str, loop_fits: int) -> dict:
    """Runs in a fresh subprocess so that ru_maxrss is this job's peak alone."""
    X, Y = _data_b(n, p, t)
    out = {"kind": kind}
    if kind == "ridge":
        from lib.ridge import RidgeCV

        sec, m = _timed(lambda: RidgeCV(alphas=ALPHAS_B, device=device, verbose=True).fit(X, Y))
        out.update(time_s=sec, fit_info=m.fit_info_,
                   chosen=np.unique(m.best_alphas_, return_counts=True)[1].tolist())
    else:
        from sklearn.linear_model import Ridge

        rng = np.random.default_rng(1)
        chans = rng.choice(t, size=loop_fits, replace=False)
        times = []
        for i, j in enumerate(chans):
            a = ALPHAS_B[i % len(ALPHAS_B)]
            sec, _ = _timed(lambda a=a, j=j: Ridge(alpha=a).fit(X, Y[:, j]))
            times.append(sec)
        out.update(fit_times=times, per_fit_s=float(np.mean(times)))
    out["maxrss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    return out


def _spawn(kind, n, p, t, device, loop_fits) -> dict:
    import torch

    cmd = [sys.executable, "-m", "bench.bench_ridge", "--_worker", kind,
           "--threads", str(torch.get_num_threads()), "--_size", f"{n},{p},{t}",
           "--device", device, "--loop-fits", str(loop_fits)]
    # progress bars on stderr
    proc = subprocess.run(cmd, check=False, cwd=REPO, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {kind!r} failed (exit code {proc.returncode}); "
                           "see its stderr above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def part_b(quick: bool, device: str, loop_fits: int) -> dict:
    n, p, t = SIZES["b"]["quick" if quick else "full"]
    print(f"\n(b) decoding scale {n} x {p} -> {t} targets, {len(ALPHAS_B)} alphas; {_load()}")
    peak = matmul_gflops(device)
    peak_np = matmul_gflops(device, lib="numpy") if device == "cpu" else None
    ours = _spawn("ridge", n, p, t, device, loop_fits)
    info = ours["fit_info"]
    flops = ridge_flops(n, p, t, info["rank"] or n, len(ALPHAS_B), info["form"], info["solver"])
    total_flops = sum(flops.values())
    phases = info["phase_s"]
    achieved = total_flops / ours["time_s"] / 1e9
    no_eigh = total_flops / max(ours["time_s"] - phases.get("eigh", 0.0), 1e-9) / 1e9
    loop = _spawn("loop", n, p, t, device, loop_fits)
    loop_total = loop["per_fit_s"] * t * len(ALPHAS_B)
    peak2 = matmul_gflops(device)
    ref = peak_np if info["backend"] == "numpy" else peak  # the BLAS that ran the products
    rows = [
        {"quantity": "lib.ridge fit wall time",
         "value": f"{ours['time_s']:.1f} s (target < 480 s), solver {info['solver']}"},
        {"quantity": "  phases", "value": ", ".join(f"{k} {v:.1f}s" for k, v in phases.items())},
        {"quantity": "lib.ridge peak RSS (data incl.)",
         "value": f"{ours['maxrss_gb']:.2f} GB (target < 8 GB)"},
        {"quantity": "matrix-product work",
         "value": f"{total_flops / 1e12:.1f} TFLOP (eigh, if any, not counted)"},
        {"quantity": "achieved (whole fit)",
         "value": f"{achieved:.0f} GFLOP/s = {achieved / ref:.0%} of {info['backend']}'s matmul"},
        {"quantity": "achieved (excluding eigh)",
         "value": f"{no_eigh:.0f} GFLOP/s = {no_eigh / ref:.0%} of {info['backend']}'s matmul"},
        {"quantity": "float32 matmul throughput",
         "value": f"torch {peak:.0f} GFLOP/s before, {peak2:.0f} after"
                  + (f"; numpy {peak_np:.0f}" if peak_np else "") + f"; backend {info['backend']}"},
        {"quantity": "original loop: one Ridge fit",
         "value": f"{loop['per_fit_s']:.2f} s (mean of {len(loop['fit_times'])})"},
        {"quantity": "original loop: all fits (est.)",
         "value": f"{loop_total / 3600:.1f} h = {t} channels x {len(ALPHAS_B)} alphas; "
                  f"{loop_total / ours['time_s']:.0f}x slower"},
    ]
    _table(rows, ["quantity", "value"])
    return {"sizes": [n, p, t], "ridge": ours, "flops": flops, "achieved_gflops": achieved,
            "achieved_gflops_excl_eigh": no_eigh, "matmul_gflops": [peak, peak2],
            "loop": loop, "loop_total_estimate_s": loop_total, "load": _load()}


# ----------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    """Run the ridge benchmarks and print their tables; returns the measurements."""
    parser = argparse.ArgumentParser(prog="python -m bench ridge",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--parts", default="a,b", help="comma-separated parts to run: a, b")
    parser.add_argument("--device", default="cpu", help="torch device for lib.ridge and himalaya")
    parser.add_argument("--loop-fits", type=int, default=3,
                        help="(channel, alpha) fits timed for the original-loop estimate")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice, one per core)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of part (a) (each fits every method once)")
    parser.add_argument("--out", default=None, help="write the measurements as JSON here")
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_size", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    if args._worker:
        n, p, t = (int(v) for v in args._size.split(","))
        print(json.dumps(_worker(args._worker, n, p, t, args.device, args.loop_fits)))
        return {}

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {args.device}; {_load()}")
    out = {"quick": args.quick, "device": args.device, "threads": torch.get_num_threads()}
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    if "a" in parts:
        out["a"] = part_a(args.quick, args.device, args.repeat)
    if "b" in parts:
        out["b"] = part_b(args.quick, args.device, args.loop_fits)
    if args.out:
        from lib.io import write_json

        write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
