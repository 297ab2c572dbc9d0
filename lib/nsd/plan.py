"""Step 1 of preparation: read the design and choose what to prepare (DESIGN.md §5).

:func:`plan_subject` reads every small file of a subject (captions, design, stimulus table, ROI
volumes, betas headers), checks them against each other and returns a :class:`PreparationPlan`:
the sessions used, the nsdgeneral voxels and their ROI labels, every trial's labels (image,
session, run, test flag) and the captions. It reads no betas; :mod:`lib.nsd.prepare` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lib.config import subject_name
from lib.nsd.design import ExpDesign, load_coco_captions, load_expdesign, load_stim_info
from lib.nsd.errors import NSDFormatError, missing
from lib.nsd.layout import COCO_CAPTION_FILES, ROI_FILES, NSDLayout
from lib.nsd.volumes import load_header, load_label_volume

logger = logging.getLogger(__name__)


@dataclass
class PreparationPlan:
    """Everything known about a subject before its betas are read (see :func:`plan_subject`).

    ``trial``, ``nsd_id``, ``session``, ``run`` and ``is_test`` have shape (n_trials,), in
    session order; ``ijk`` (n_voxels, 3); each ``rois`` entry (n_voxels,); ``captions`` maps
    str(nsd id) to its COCO captions.
    """

    layout: NSDLayout
    nsd_root: str
    subject: int
    sessions: list[int]
    sessions_not_used: list[int]
    n_shared: int
    grid: tuple
    affine: np.ndarray
    ijk: np.ndarray
    rois: dict
    trial: np.ndarray
    nsd_id: np.ndarray
    session: np.ndarray
    run: np.ndarray
    is_test: np.ndarray
    captions: dict = field(repr=False)

    @property
    def name(self) -> str:
        """``"subjXX"``."""
        return subject_name(self.subject)

    @property
    def n_voxels(self) -> int:
        """Number of nsdgeneral voxels kept."""
        return int(self.ijk.shape[0])

    def rows(self, session: int) -> slice:
        """Rows (trials) of ``session`` in the prepared arrays."""
        idx = np.flatnonzero(self.session == session)
        return slice(int(idx[0]), int(idx[-1]) + 1)


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


def _choose_sessions(layout: NSDLayout, subj: int, design: ExpDesign, sessions):
    """Sessions to use (sorted) and the design's sessions not used; errors name the files."""
    name = subject_name(subj)
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
    return use, skipped


def _voxels_and_rois(layout: NSDLayout, subj: int, first_session: int):
    """Grid, affine, nsdgeneral voxel indices (C order) and every ROI's labels at them."""
    name = subject_name(subj)
    first = load_header(layout.betas(subj, first_session))
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
    return grid, affine, ijk, rois


def _trial_labels(layout: NSDLayout, design: ExpDesign, subj: int, use: list[int]) -> dict:
    """Trial index, nsd id, session, run and test flag of every trial of ``use``."""
    per_session = {s: design.session_trials(s) for s in use}
    trials = np.concatenate([per_session[s] for s in use])
    if trials.max() >= design.masterordering.size:
        raise NSDFormatError(f"masterordering in {layout.expdesign} is shorter than the design.")
    return {
        "trial": trials.astype(np.int64),
        "nsd_id": design.trial_nsd_ids(subj, trials).astype(np.int64),
        "session": np.concatenate(
            [np.full(per_session[s].size, s, dtype=np.int64) for s in use]),
        "run": np.concatenate([design.session_runs(s) for s in use]).astype(np.int64),
        "is_test": design.trial_is_test(trials).astype(bool),
    }


def _subject_captions(layout, design, stim, coco, subj: int, nsd_id: np.ndarray) -> dict:
    """COCO captions of every image of the subject, keyed by str(nsd id)."""
    name = subject_name(subj)
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
    return captions


def plan_subject(nsd_root, subject, sessions=None, coco_annotations=None) -> PreparationPlan:
    """Read the design and choose what to prepare: sessions, voxels, trial labels, captions.

    Reads every small file (captions first, so a missing one stops the run in a second) and
    checks them against each other; reads no betas.

    Parameters
    ----------
    nsd_root : path-like
        NSD root in NSD's layout (``nsddata/``, ``nsddata_betas/``, ``nsddata_stimuli/``).
    subject : int or str
        Subject number (1-8) or ``"subjXX"``.
    sessions : iterable of int, str or None
        Sessions to use (``[1, 2]`` or ``"1-37"``, ``"1,3,5-7"``); default every session whose
        betas file is present.
    coco_annotations : path-like or None
        Folder holding ``captions_train2017.json`` and ``captions_val2017.json``; default
        ``nsd_root/annotations``. Both are required (NSD's images come from both COCO splits).

    Returns
    -------
    plan : PreparationPlan
        A trial is a test trial when its image is one of the ``n_shared`` shared images.

    Raises
    ------
    lib.nsd.NSDMissingFileError
        A file preparation needs is absent; the message names it and the command that fetches it.
    """
    subj = _subject_number(subject)
    layout = NSDLayout(nsd_root)
    coco_dir = Path(coco_annotations) if coco_annotations is not None else layout.annotations
    coco = _require_captions(coco_dir)
    design = load_expdesign(layout.expdesign)
    stim = load_stim_info(layout.stim_info)
    if not 1 <= subj <= design.subjectim.shape[0]:
        raise NSDFormatError(
            f"subject={subject!r}: the design file {layout.expdesign} describes subjects "
            f"1-{design.subjectim.shape[0]}."
        )
    use, skipped = _choose_sessions(layout, subj, design, sessions)
    grid, affine, ijk, rois = _voxels_and_rois(layout, subj, use[0])
    labels = _trial_labels(layout, design, subj, use)
    captions = _subject_captions(layout, design, stim, coco, subj, labels["nsd_id"])
    return PreparationPlan(
        layout=layout, nsd_root=str(nsd_root), subject=subj, sessions=use,
        sessions_not_used=skipped, n_shared=design.n_shared, grid=grid, affine=affine,
        ijk=ijk, rois=rois, captions=captions, **labels,
    )


