"""Raw NSD layout -> one prepared file per subject (DESIGN.md §5).

``prepare_subject`` reads the design, the stimulus table, the ROI volumes and every betas
session present, and writes ``<out_dir>/subjXX/prepared.h5`` (masked, z-scored single-trial
betas with their trial, image, session, run and split labels) and ``captions.json``.

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

from lib.config import show_progress, subject_name
from lib.io import atomic_path, write_json
from lib.nsd.design import load_coco_captions, load_expdesign, load_stim_info
from lib.nsd.errors import NSDFormatError, missing
from lib.nsd.layout import COCO_CAPTION_FILES, ROI_FILES, NSDLayout
from lib.nsd.volumes import load_header, load_label_volume, read_masked_volumes

logger = logging.getLogger(__name__)

#: NSD stores betas as percent signal change times 300 in int16.
BETA_SCALE = 300.0
ZSCORE_MODES = ("session", "global", "none")
_STAT_BLOCK = 2048


def _subject_number(subject) -> int:
    name = subject_name(subject)
    try:
        return int(name[4:])
    except ValueError as err:
        raise ValueError(
            f"subject={subject!r}: expected an int such as 1 or a name such as 'subj01'."
        ) from err


def _require_captions(folder: Path) -> dict[int, list[str]]:
    """COCO captions by COCO image id; an error naming the files and the command when absent.

    NSD's images come from COCO's train and val splits, so both caption files are required.
    """
    absent = [folder / f for f in COCO_CAPTION_FILES if not (folder / f).is_file()]
    if absent:
        raise missing(
            ", ".join(str(p) for p in absent),
            "COCO caption annotations",
            f"Fetch them with `python -m lib.nsd download --coco-only --dest {folder.parent}` "
            "(or extract them from https://cocodataset.org's annotations_trainval2017.zip into "
            f"{folder}). Preparation, the language zoo, stage 2 and the caption metrics read them.",
        )
    return load_coco_captions(folder)


def _train_stats(values: np.ndarray, is_test: np.ndarray):
    """Mean and standard deviation (ddof=0) per voxel over training rows only.

    Parameters
    ----------
    values : ndarray of shape (n_trials, n_voxels)
    is_test : ndarray of shape (n_trials,) bool

    Returns
    -------
    mean, std : ndarray of shape (n_voxels,) float64; std is 1 where it is 0.
    """
    train = ~np.asarray(is_test, dtype=bool)
    # science hygiene: statistics never see a test (shared-image) trial
    assert not np.any(is_test[train]), "a test trial would contribute to z-scoring statistics"
    if train.sum() < 2:
        raise NSDFormatError(
            f"Only {int(train.sum())} training trial(s) available for z-scoring statistics; "
            "need at least 2. Use zscore='global' or 'none', or add sessions."
        )
    rows = np.flatnonzero(train)
    mean = np.empty(values.shape[1])
    std = np.empty(values.shape[1])
    for lo in range(0, values.shape[1], _STAT_BLOCK):  # column blocks bound the float64 copies
        x = values[rows, lo : lo + _STAT_BLOCK].astype(np.float64)
        mean[lo : lo + _STAT_BLOCK] = x.mean(axis=0)
        std[lo : lo + _STAT_BLOCK] = x.std(axis=0)
    std[std == 0] = 1.0
    return mean, std


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
    """Prepare one NSD subject: masked, z-scored single-trial betas plus captions.

    Parameters
    ----------
    nsd_root : path-like
        NSD root in NSD's layout (``nsddata/``, ``nsddata_betas/``, ``nsddata_stimuli/``).
    subject : int or str
        Subject number (1-8) or ``"subjXX"``.
    out_dir : path-like
        Output root; files go to ``out_dir/subjXX/``.
    zscore : {"session", "global", "none"}
        ``"session"``: per session and voxel, with mean and standard deviation (ddof=0) of that
        session's training trials, applied to all its trials. ``"global"``: the same with the
        training trials of all sessions. ``"none"``: betas / 300 (percent signal change).
    coco_annotations : path-like or None
        Folder holding ``captions_train2017.json`` and ``captions_val2017.json``; default
        ``nsd_root/annotations``. Both are required (NSD's images come from both COCO splits):
        without them preparation stops before writing anything.
    sessions : iterable of int, str or None
        Sessions to use (``[1, 2]`` or ``"1-37"``, ``"1,3,5-7"``); default every session whose
        betas file is present.
    dtype : {"float32", "float16"}
        Storage type of ``betas``.
    progress : bool
        Show a tqdm bar over sessions.

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
    if zscore not in ZSCORE_MODES:
        raise ValueError(f"zscore={zscore!r}: expected one of {ZSCORE_MODES}.")
    if np.dtype(dtype) not in (np.dtype("float32"), np.dtype("float16")):
        raise ValueError(f"dtype={dtype!r}: expected 'float32' or 'float16'.")
    subj = _subject_number(subject)
    name = subject_name(subj)
    layout = NSDLayout(nsd_root)
    coco_dir = Path(coco_annotations) if coco_annotations is not None else layout.annotations
    coco = _require_captions(coco_dir)  # first: a missing file stops the run in a second
    design = load_expdesign(layout.expdesign)
    stim = load_stim_info(layout.stim_info)
    if not 1 <= subj <= design.subjectim.shape[0]:
        raise NSDFormatError(
            f"subject={subject!r}: the design file {layout.expdesign} describes subjects "
            f"1-{design.subjectim.shape[0]}."
        )

    # --- sessions -------------------------------------------------------------------------
    present = layout.sessions_present(subj)
    if not present:
        raise missing(
            layout.betas_dir(subj) / "betas_sessionNN.nii.gz",
            f"No betas for {name}",
            f"Download them with `python -m lib.nsd download --subject {subj} --sessions 1-37 "
            f"--dest {layout.root}`, or check the subject number and nsd_root.",
        )
    if sessions is None:
        use = present
    else:
        if isinstance(sessions, str):
            from lib.nsd.download import parse_sessions

            sessions = parse_sessions(sessions)
        use = sorted(int(s) for s in sessions)
        absent = [s for s in use if s not in present]
        if absent:
            raise missing(
                layout.betas(subj, absent[0]),
                f"Betas of session(s) {absent} for {name}",
                f"Sessions present: {present}. Download the missing ones or leave them out.",
            )
    beyond = [s for s in use if s > design.n_sessions or s < 1]
    if beyond:
        raise NSDFormatError(
            f"Betas of session(s) {beyond} found for {name}, but the design file "
            f"{layout.expdesign} has sessions 1-{design.n_sessions}."
        )
    skipped = [s for s in range(1, design.n_sessions + 1) if s not in use]
    logger.info("%s: using %d session(s) %s; not used/absent: %s", name, len(use), use, skipped)

    # --- grid, mask, ROIs -----------------------------------------------------------------
    first = load_header(layout.betas(subj, use[0]))
    grid = tuple(int(s) for s in first.shape[:3])
    affine = np.asarray(first.affine, dtype=np.float64)
    general_path = layout.roi(subj, "nsdgeneral")
    if not general_path.exists():
        raise missing(
            general_path,
            "nsdgeneral ROI file (defines the voxels kept)",
            f"Download nsddata/ppdata/{name}/func1pt8mm/roi/nsdgeneral.nii.gz "
            "(`python -m lib.nsd download` fetches it).",
        )
    general = load_label_volume(general_path, grid, affine, what="nsdgeneral ROI")
    mask = general == 1
    if not mask.any():
        raise NSDFormatError(f"nsdgeneral ROI file {general_path} has no voxel labelled 1.")
    ijk = np.argwhere(mask)  # C order of the mask
    rois = {"nsdgeneral": general[mask]}
    for roi in ROI_FILES[1:]:
        path = layout.roi(subj, roi)
        if path.exists():
            rois[roi] = load_label_volume(path, grid, affine, what=f"{roi} ROI")[mask]
        else:
            logger.info("%s: ROI file %s not found; skipped", name, path)

    # --- trials -------------------------------------------------------------------------
    per_session = {s: design.session_trials(s) for s in use}
    trials = np.concatenate([per_session[s] for s in use])
    if trials.max() >= design.masterordering.size:
        raise NSDFormatError(f"masterordering in {layout.expdesign} is shorter than the design.")
    nsd_id = design.trial_nsd_ids(subj, trials)
    is_test = design.trial_is_test(trials)
    session = np.concatenate([np.full(per_session[s].size, s, dtype=np.int64) for s in use])
    run = np.concatenate([design.session_runs(s) for s in use])

    # --- captions -----------------------------------------------------------------------
    subject_ids = np.unique(np.concatenate([design.subject_images(subj), nsd_id]))
    unknown = [int(i) for i in subject_ids if i not in stim.index]
    if unknown:
        raise NSDFormatError(
            f"{len(unknown)} nsd ids of {name} (e.g. {unknown[:3]}) are not in "
            f"{layout.stim_info}; the stimulus table does not match the design file."
        )
    coco_ids = stim.loc[subject_ids, "cocoId"].to_numpy().astype(np.int64)
    captions = {str(int(i)): coco.get(int(c), []) for i, c in zip(subject_ids, coco_ids)}
    n_without = sum(1 for v in captions.values() if not v)
    if n_without:
        logger.warning("%s: %d of %d images have no COCO caption", name, n_without, len(captions))

    # --- write --------------------------------------------------------------------------
    out = Path(out_dir) / name
    path = out / "prepared.h5"
    n_vox = int(ijk.shape[0])
    rows_per_chunk = int(max(1, min(trials.size,
                                    (4 * 2**20) // (n_vox * np.dtype(dtype).itemsize))))
    offsets = np.concatenate([[0], np.cumsum([per_session[s].size for s in use])])
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        betas = h5.create_dataset(
            "betas", shape=(trials.size, n_vox), dtype=dtype, chunks=(rows_per_chunk, n_vox)
        )
        stat_mean = h5.create_dataset("zscore_stats/mean", (len(use), n_vox), dtype="float32")
        stat_std = h5.create_dataset("zscore_stats/std", (len(use), n_vox), dtype="float32")
        total = np.zeros(n_vox)
        total_sq = np.zeros(n_vox)
        n_train = 0
        bar = tqdm(use, desc=f"{name} sessions", unit="session",
                   disable=not show_progress(progress))
        for k, s in enumerate(bar):
            t0 = time.perf_counter()
            lo, hi = int(offsets[k]), int(offsets[k + 1])
            x = read_masked_volumes(layout.betas(subj, s), grid, ijk, n_volumes=hi - lo)
            x /= BETA_SCALE
            test_s = is_test[lo:hi]
            if zscore == "session":
                mean, std = _train_stats(x, test_s)
                x -= mean.astype(np.float32)  # in place: no second session-sized array
                x /= std.astype(np.float32)
                stat_mean[k], stat_std[k] = mean, std
            elif zscore == "global":
                rows = np.flatnonzero(~test_s)
                for c in range(0, n_vox, _STAT_BLOCK):
                    train = x[rows, c : c + _STAT_BLOCK].astype(np.float64)
                    total[c : c + _STAT_BLOCK] += train.sum(axis=0)
                    total_sq[c : c + _STAT_BLOCK] += (train**2).sum(axis=0)
                n_train += rows.size
            betas[lo:hi] = x
            del x  # keep one session in memory, not two
            logger.info(
                "%s session %02d: %d trials (%d test) in %.1f s",
                name, s, hi - lo, int(test_s.sum()), time.perf_counter() - t0,
            )
        if zscore == "global":
            if n_train < 2:
                raise NSDFormatError("Fewer than 2 training trials: cannot z-score globally.")
            assert n_train == int((~is_test).sum())
            mean = total / n_train
            std = np.sqrt(np.maximum(total_sq / n_train - mean**2, 0.0))
            std[std == 0] = 1.0
            stat_mean[:] = mean
            stat_std[:] = std
            for lo in range(0, trials.size, rows_per_chunk * 8):
                hi = min(trials.size, lo + rows_per_chunk * 8)
                betas[lo:hi] = ((betas[lo:hi].astype(np.float64) - mean) / std).astype(dtype)
        elif zscore == "none":
            stat_mean[:] = 0.0
            stat_std[:] = 1.0
        h5.create_dataset("trial", data=trials.astype(np.int64))
        h5.create_dataset("nsd_id", data=nsd_id.astype(np.int64))
        h5.create_dataset("session", data=session.astype(np.int64))
        h5.create_dataset("run", data=run.astype(np.int64))
        h5.create_dataset("is_test", data=is_test.astype(bool))
        h5.create_dataset("voxel_ijk", data=ijk.astype(np.int64))
        for roi, labels in rois.items():
            h5.create_dataset(f"roi/{roi}", data=labels.astype(np.int32))
        h5.attrs["affine"] = affine
        h5.attrs["grid_shape"] = np.asarray(grid, dtype=np.int64)
        h5.attrs["zscore"] = zscore
        h5.attrs["sessions"] = np.asarray(use, dtype=np.int64)
        h5.attrs["sessions_not_used"] = np.asarray(skipped, dtype=np.int64)
        h5.attrs["nsd_root"] = str(nsd_root)
        h5.attrs["subject"] = subj
        h5.attrs["n_shared"] = design.n_shared
        h5.attrs["beta_scale"] = BETA_SCALE
        h5.attrs["zscore_ddof"] = 0
        h5.attrs["captions"] = "present"
        h5.attrs["dtype"] = str(np.dtype(dtype))
    write_json(out / "captions.json", captions)  # after prepared.h5: a failure leaves neither
    logger.info("%s: wrote %s (%d trials x %d voxels)", name, path, trials.size, n_vox)
    return path
