"""Benchmark: NSD preparation at real size versus the original study's approach.

Synthetic sessions with NSD's real geometry (81 x 104 x 83 voxels x 750 trials, int16,
gzip-compressed NIfTI; about 220k in-brain voxels, 15,724 of them in nsdgeneral) are written
once under ``data/bench/prepare/`` and reused. Then, in the same run and on the same files:

- **ours**: :func:`lib.nsd.prepare_subject` (one streaming pass per session file, masked on the
  fly, z-scored with training-trial statistics, one HDF5 file);
- **original**: the approach of the original study: a pass over every session to compute the
  mean, a second pass for the standard deviation, and a third that writes one full-volume
  float32 ``.npy`` per trial (loaded with nibabel ``get_fdata(dtype=float32)``, which is
  generous: the default float64 doubles its memory).

Each approach runs in its own subprocess; peak memory is that child's resident high-water
mark (``VmHWM``; Linux). The baseline of a child that only imports the libraries is reported too.

Run: ``python bench/bench_prepare.py --sessions 3`` (or ``python -m bench``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
GRID = (81, 104, 83)
TRIALS = 750
N_RUNS = 12
N_GENERAL = 15724
AFFINE = np.array([[-1.8, 0, 0, 72.0], [0, 1.8, 0, -90.0], [0, 0, 1.8, -72.0], [0, 0, 0, 1]])


def _brain_masks(rng):
    """An ellipsoidal 'brain' and, inside its posterior part, exactly N_GENERAL nsdgeneral
    voxels."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in GRID), indexing="ij")
    brain = (x / 0.85) ** 2 + (y / 0.9) ** 2 + (z / 0.8) ** 2 <= 1
    score = np.where(brain, -y + 0.05 * rng.standard_normal(GRID), -np.inf)  # posterior first
    flat = np.argsort(score, axis=None)[::-1][:N_GENERAL]
    general = np.where(brain, 0, -1).astype(np.int16)
    general.flat[flat] = 1
    return brain, general


def _write_nifti_stream(path, n_vols, brain, rng, chunk=50):
    """Write an int16 (X, Y, Z, n_vols) .nii.gz volume by volume (Fortran order per volume)."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(GRID + (n_vols,))
    hdr.set_data_dtype(np.int16)
    hdr.set_qform(AFFINE, code=1)
    hdr.set_sform(AFFINE, code=1)
    hdr["vox_offset"] = 352
    idx = np.flatnonzero(brain.ravel(order="F"))
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wb", compresslevel=1) as fh:
        hdr.write_to(fh)
        fh.write(b"\x00" * (352 - 348))
        block = np.zeros((chunk, int(np.prod(GRID))), dtype=np.int16)
        for t in range(0, n_vols, chunk):
            n = min(chunk, n_vols - t)
            block[:n, idx] = (rng.standard_normal((n, idx.size), dtype=np.float32)
                              * 400).astype(np.int16)
            fh.write(block[:n].tobytes())
    tmp.rename(path)


def build_synthetic(root: Path, n_sessions: int, seed: int = 0) -> Path:
    """Write (or reuse) a synthetic NSD root with ``n_sessions`` real-size sessions."""
    import nibabel as nib
    import pandas as pd
    from scipy.io import savemat

    from lib.nsd.layout import NSDLayout

    layout = NSDLayout(root)
    marker = root / "BENCH.json"
    spec = {"grid": GRID, "trials": TRIALS, "n_sessions": n_sessions, "seed": seed, "v": 1}
    if marker.exists() and json.loads(marker.read_text()) == json.loads(json.dumps(spec)):
        return root
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    brain, general = _brain_masks(rng)
    n_images, n_shared = 10000, 1000
    per_run = np.full(N_RUNS, TRIALS // N_RUNS)
    per_run[: TRIALS - per_run.sum()] += 1
    stimpattern = np.zeros((n_sessions, N_RUNS, 75), dtype=np.uint8)
    for r, n in enumerate(per_run):
        stimpattern[:, r, 5 : 5 + n] = 1
    masterordering = rng.integers(1, n_images + 1, n_sessions * TRIALS)
    subjectim = (rng.permutation(73000)[:n_images] + 1)[None, :]
    layout.expdesign.parent.mkdir(parents=True)
    savemat(layout.expdesign, {
        "masterordering": masterordering[None].astype(np.float64),
        "subjectim": subjectim.astype(np.float64),
        "sharedix": subjectim[:, :n_shared].astype(np.float64),
        "stimpattern": stimpattern.astype(np.float64),
    })
    pd.DataFrame({"nsdId": np.arange(73000), "cocoId": np.arange(73000) + 1,
                  "cocoSplit": "train2017"}).to_csv(layout.stim_info)
    roi = layout.roi(1, "nsdgeneral")
    roi.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(general, AFFINE), roi)
    layout.betas_dir(1).mkdir(parents=True)
    for s in range(1, n_sessions + 1):
        t0 = time.perf_counter()
        _write_nifti_stream(layout.betas(1, s), TRIALS, brain, rng)
        print(f"  wrote synthetic session {s} ({layout.betas(1, s).stat().st_size / 1e6:.0f} MB "
              f"compressed) in {time.perf_counter() - t0:.0f} s", flush=True)
    marker.write_text(json.dumps(spec))
    return root


# --- the two approaches, each run in a child process --------------------------------------------
_OURS = r"""
import json, sys, time, warnings
def peak_kb():  # this process's own high-water mark (ru_maxrss is inherited through fork)
    import re
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))
from lib.nsd import prepare_subject
root, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
warnings.simplefilter("ignore")
t0 = time.perf_counter()
path = prepare_subject(root, 1, out, sessions=range(1, n + 1), coco_annotations=out, progress=False)
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "maxrss_kb": peak_kb(),
                  "bytes": path.stat().st_size, "trials": n * 750}))
"""

_ORIGINAL = r"""
import json, sys, time
def peak_kb():  # this process's own high-water mark (ru_maxrss is inherited through fork)
    import re
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))
from pathlib import Path
import nibabel as nib, numpy as np
root, out, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
files = [root / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
         / f"betas_session{s:02d}.nii.gz" for s in range(1, n + 1)]
t0 = time.perf_counter()
total, count = None, 0
for f in files:                                   # pass 1: mean
    x = nib.load(f).get_fdata(dtype=np.float32) / 300
    total = x.sum(-1, dtype=np.float64) if total is None else total + x.sum(-1, dtype=np.float64)
    count += x.shape[-1]; del x
mean = total / count
sq = None
for f in files:                                   # pass 2: standard deviation
    x = nib.load(f).get_fdata(dtype=np.float32) / 300
    d = ((x - mean[..., None].astype(np.float32)) ** 2).sum(-1, dtype=np.float64)
    sq = d if sq is None else sq + d; del x
std = np.sqrt(sq / count); std[std == 0] = 1
m32, s32 = mean.astype(np.float32), std.astype(np.float32)
nbytes, k = 0, 0
for f in files:                                   # pass 3: one full-volume .npy per trial
    x = nib.load(f).get_fdata(dtype=np.float32) / 300
    for t in range(x.shape[-1]):
        p = out / f"trial_{k:05d}.npy"
        np.save(p, (x[..., t] - m32) / s32); nbytes += p.stat().st_size; k += 1
    del x
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "maxrss_kb": peak_kb(),
                  "bytes": nbytes, "trials": k}))
"""

_BASELINE = r"""
import json
def peak_kb():  # this process's own high-water mark (ru_maxrss is inherited through fork)
    import re
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))
import h5py, nibabel, numpy, scipy.io, pandas, lib.nsd
print(json.dumps({"wall": 0, "maxrss_kb": peak_kb(),
                  "bytes": 0, "trials": 1}))
"""


def _child(code: str, *args) -> dict:
    res = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, check=False,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    """Run the benchmark and print a table; returns the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=3, help="real-size sessions (default 3)")
    parser.add_argument("--workdir", default=str(REPO / "data" / "bench" / "prepare"))
    parser.add_argument("--skip-original", action="store_true")
    args, _ = parser.parse_known_args(argv)
    work = Path(args.workdir)
    n = args.sessions
    print(f"bench_prepare: {n} synthetic sessions of {GRID} x {TRIALS} int16 in {work}", flush=True)
    root = build_synthetic(work / f"nsd_{n}", n)
    out_dir = work / "out"
    results = {"baseline": _child(_BASELINE)}
    runs = {"ours (1 session)": 1, f"ours ({n} sessions)": n} if n > 1 else {"ours (1 sessions)": 1}
    for label, sessions in runs.items():
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        results[label] = _child(_OURS, root, out_dir, sessions)
        print(f"  {label}: {results[label]['wall']:.1f} s", flush=True)
    if not args.skip_original:
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        results[f"original ({n} sessions)"] = _child(_ORIGINAL, root, out_dir, n)
    shutil.rmtree(out_dir, ignore_errors=True)

    base = results["baseline"]["maxrss_kb"] / 1024
    print(f"\n{'approach':<24}{'s/session':>10}{'peak MB':>10}{'B/trial':>12}{'total MB':>10}")
    for label, r in results.items():
        if label == "baseline":
            continue
        n_s = r["trials"] // TRIALS
        print(f"{label:<24}{r['wall'] / n_s:>10.1f}{r['maxrss_kb'] / 1024:>10.0f}"
              f"{r['bytes'] / r['trials']:>12.0f}{r['bytes'] / 1e6:>10.0f}")
    print(f"{'(import baseline)':<24}{'':>10}{base:>10.0f}")
    ours, orig = results[f"ours ({n} sessions)"], results.get(f"original ({n} sessions)")
    if orig:
        print(f"\nspeed-up {orig['wall'] / ours['wall']:.1f}x, peak memory "
              f"{orig['maxrss_kb'] / ours['maxrss_kb']:.1f}x lower, storage "
              f"{orig['bytes'] / ours['bytes']:.0f}x smaller")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
