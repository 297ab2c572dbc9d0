"""Raw NSD layout -> one prepared file per subject (DESIGN.md §5), in named steps.

1. :func:`lib.nsd.plan_subject` (:mod:`lib.nsd.plan`): read the design, choose the sessions,
   the nsdgeneral voxels and ROI labels, every trial's labels (image, session, run, test flag)
   and the captions.
2. :func:`read_session_betas`: one session's betas at those voxels, in percent signal change.
3. :func:`lib.nsd.zscore_session`: z-score each voxel within the session (training trials'
   statistics).
4. :func:`write_prepared`: steps 2-3 session by session into ``<out_dir>/subjXX/prepared.h5``
   (masked, z-scored single-trial betas with their labels), then ``captions.json``.

:func:`prepare_subject` runs them all (tests, the toy world, bench and ``python -m lib.nsd
prepare`` call it).

Storage: only nsdgeneral voxels are kept (about 15.7k of the 700k voxels of the 1.8 mm grid in
real NSD), in one HDF5 file. ``dtype="float32"`` (default) costs 63 kB per trial, about 1.9 GB
for a subject's 30,000 trials; ``"float16"`` halves that at a relative precision of 1e-3, which
is far below the noise of single-trial betas. The original study wrote one full-volume float
file per trial (2.8 MB each, about 78 GB per subject).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from lib.config import show_progress
from lib.io import atomic_path, write_json
from lib.nsd.plan import PreparationPlan, plan_subject
from lib.nsd.volumes import read_masked_volumes
from lib.nsd.zscore import ZSCORE_MODES, GlobalStats, zscore_session

logger = logging.getLogger(__name__)

#: NSD stores betas as percent signal change times 300 in int16.
BETA_SCALE = 300.0


def _check_options(zscore: str, dtype: str) -> None:
    if zscore not in ZSCORE_MODES:
        raise ValueError(f"zscore={zscore!r}: expected one of {ZSCORE_MODES}.")
    if np.dtype(dtype) not in (np.dtype("float32"), np.dtype("float16")):
        raise ValueError(f"dtype={dtype!r}: expected 'float32' or 'float16'.")


def read_session_betas(plan: PreparationPlan, session: int) -> np.ndarray:
    """One session's betas at the plan's voxels, in percent signal change (stored / 300).

    Returns
    -------
    betas : ndarray of shape (n_session_trials, n_voxels) float32
    """
    rows = plan.rows(session)
    x = read_masked_volumes(plan.layout.betas(plan.subject, session), plan.grid, plan.ijk,
                            n_volumes=rows.stop - rows.start)
    x /= BETA_SCALE
    return x


def _create_datasets(h5: h5py.File, plan: PreparationPlan, dtype: str):
    """Empty ``betas`` (chunks of about 4 MB) and per-session ``zscore_stats`` datasets."""
    n_trials, n_vox = plan.trial.size, plan.n_voxels
    rows_per_chunk = int(max(1, min(n_trials,
                                    (4 * 2**20) // (n_vox * np.dtype(dtype).itemsize))))
    betas = h5.create_dataset(
        "betas", shape=(n_trials, n_vox), dtype=dtype, chunks=(rows_per_chunk, n_vox)
    )
    n_sessions = len(plan.sessions)
    stat_mean = h5.create_dataset("zscore_stats/mean", (n_sessions, n_vox), dtype="float32")
    stat_std = h5.create_dataset("zscore_stats/std", (n_sessions, n_vox), dtype="float32")
    return betas, stat_mean, stat_std


def _write_session(plan: PreparationPlan, session: int, betas, zscore: str,
                   stats: GlobalStats | None):
    """Read one session's betas, z-score them as ``zscore`` says and store them in ``betas``.

    Returns
    -------
    session_stats : pair of ndarray of shape (n_voxels,) or None
        The session's training mean and std with ``zscore="session"``, else None (``"global"``
        adds the session to ``stats`` instead).
    """
    t0 = time.perf_counter()
    rows = plan.rows(session)
    x = read_session_betas(plan, session)
    test_s = plan.is_test[rows]
    session_stats = None
    if zscore == "session":
        x, mean, std = zscore_session(x, test_s, inplace=True)
        session_stats = (mean, std)
    elif stats is not None:
        stats.add(x, test_s)
    betas[rows] = x
    del x  # keep one session in memory, not two
    logger.info("%s session %02d: %d trials (%d test) in %.1f s", plan.name, session,
                rows.stop - rows.start, int(test_s.sum()), time.perf_counter() - t0)
    return session_stats


def _apply_global(betas, stat_mean, stat_std, stats: GlobalStats, dtype: str) -> None:
    """Second pass of ``zscore="global"``: z-score the stored betas block by block."""
    mean, std = stats.mean_std()
    stat_mean[:] = mean
    stat_std[:] = std
    n_trials, step = betas.shape[0], betas.chunks[0] * 8
    for lo in range(0, n_trials, step):
        hi = min(n_trials, lo + step)
        betas[lo:hi] = ((betas[lo:hi].astype(np.float64) - mean) / std).astype(dtype)


def _write_labels(h5: h5py.File, plan: PreparationPlan, zscore: str, dtype: str) -> None:
    """Trial labels, voxel coordinates, ROI labels and the file's attributes."""
    for key in ("trial", "nsd_id", "session", "run", "is_test"):
        h5.create_dataset(key, data=getattr(plan, key))
    h5.create_dataset("voxel_ijk", data=plan.ijk.astype(np.int64))
    for roi, labels in plan.rois.items():
        h5.create_dataset(f"roi/{roi}", data=labels.astype(np.int32))
    h5.attrs["affine"] = plan.affine
    h5.attrs["grid_shape"] = np.asarray(plan.grid, dtype=np.int64)
    h5.attrs["zscore"] = zscore
    h5.attrs["sessions"] = np.asarray(plan.sessions, dtype=np.int64)
    h5.attrs["sessions_not_used"] = np.asarray(plan.sessions_not_used, dtype=np.int64)
    h5.attrs["nsd_root"] = plan.nsd_root
    h5.attrs["subject"] = plan.subject
    h5.attrs["n_shared"] = plan.n_shared
    h5.attrs["beta_scale"] = BETA_SCALE
    h5.attrs["zscore_ddof"] = 0
    h5.attrs["captions"] = "present"
    h5.attrs["dtype"] = str(np.dtype(dtype))


def write_prepared(
    plan: PreparationPlan,
    out_dir,
    zscore: str = "session",
    dtype: str = "float32",
    progress: bool = True,
) -> Path:
    """Read, z-score and store a planned subject session by session; then its captions.

    Memory is bounded by one masked session. ``prepared.h5`` is written atomically, and
    ``captions.json`` after it, so a failure leaves neither.

    Parameters
    ----------
    plan : PreparationPlan
        From :func:`plan_subject`.
    out_dir : path-like
        Output root; files go to ``out_dir/subjXX/``.
    zscore : {"session", "global", "none"}
        ``"session"``: :func:`lib.nsd.zscore_session` on each session. ``"global"``: the same
        with the training trials of all sessions. ``"none"``: betas / 300 (percent signal
        change).
    dtype : {"float32", "float16"}
        Storage type of ``betas``.
    progress : bool
        Show a tqdm bar over sessions.

    Returns
    -------
    path : Path
        ``out_dir/subjXX/prepared.h5``: ``betas`` (n_trials, n_voxels), the labels of
        :class:`PreparationPlan`, ``zscore_stats/mean`` and ``/std`` (n_sessions, n_voxels).
    """
    _check_options(zscore, dtype)
    name = plan.name
    path = Path(out_dir) / name / "prepared.h5"
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        betas, stat_mean, stat_std = _create_datasets(h5, plan, dtype)
        stats = GlobalStats(plan.n_voxels) if zscore == "global" else None
        bar = tqdm(plan.sessions, desc=f"{name} sessions", unit="session",
                   disable=not show_progress(progress))
        for k, s in enumerate(bar):
            session_stats = _write_session(plan, s, betas, zscore, stats)
            if session_stats is not None:
                stat_mean[k], stat_std[k] = session_stats
        if stats is not None:
            assert stats.n_train == int((~plan.is_test).sum())
            _apply_global(betas, stat_mean, stat_std, stats, dtype)
        elif zscore == "none":
            stat_mean[:] = 0.0
            stat_std[:] = 1.0
        _write_labels(h5, plan, zscore, dtype)
    write_json(path.parent / "captions.json", plan.captions)  # after prepared.h5
    logger.info("%s: wrote %s (%d trials x %d voxels)", name, path, plan.trial.size,
                plan.n_voxels)
    return path


def prepare_subject(
    nsd_root,
    subject,
    out_dir,
    zscore: str = "session",
    coco_annotations=None,
    sessions=None,
    dtype: str = "float32",
    progress: bool = True,
) -> Path:
    """Prepare one NSD subject: :func:`plan_subject`, then :func:`write_prepared`.

    Parameters
    ----------
    nsd_root, subject, sessions, coco_annotations
        As :func:`plan_subject`.
    out_dir, zscore, dtype, progress
        As :func:`write_prepared`.

    Returns
    -------
    path : Path
        ``out_dir/subjXX/prepared.h5``.

    Raises
    ------
    lib.nsd.NSDMissingFileError
        A file preparation needs is absent (the captions, the betas, nsdgeneral); the message
        names it and the command that fetches it. Nothing is written then.
    """
    _check_options(zscore, dtype)
    plan = plan_subject(nsd_root, subject, sessions=sessions, coco_annotations=coco_annotations)
    return write_prepared(plan, out_dir, zscore=zscore, dtype=dtype, progress=progress)
