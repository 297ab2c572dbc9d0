"""The experimental design (``nsd_expdesign.mat``) and stimulus table
(``nsd_stim_info_merged.csv``).

Everything here is read from the files: the number of sessions, runs and trials, the number of
shared (test) images and which trial showed which image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.nsd.errors import NSDFormatError, missing

_DOWNLOAD_FIX = (
    "Download it with `python -m lib.nsd download --subject N --sessions 1-37 --dest NSD_ROOT` "
    "or check that nsd_root points at the folder holding nsddata/."
)


@dataclass(frozen=True)
class ExpDesign:
    """NSD's experimental design for all subjects.

    Attributes
    ----------
    masterordering : ndarray of shape (n_trials,)
        1-based index into a subject's image list for every trial (global trial order).
    subjectim : ndarray of shape (n_subjects, n_images)
        1-based 73k ids of each subject's images; the first ``n_shared`` columns are shared.
    sharedix : ndarray of shape (n_shared,)
        1-based 73k ids of the shared images.
    stimpattern : ndarray of shape (n_sessions, n_runs, n_slots)
        1 where a slot of a run holds a stimulus trial, 0 for blank slots.
    """

    masterordering: np.ndarray
    subjectim: np.ndarray
    sharedix: np.ndarray
    stimpattern: np.ndarray
    path: Path

    @property
    def n_shared(self) -> int:
        """Number of shared images (1000 in NSD)."""
        return int(self.sharedix.size)

    @property
    def n_sessions(self) -> int:
        """Number of sessions in the design (40 in NSD)."""
        return int(self.stimpattern.shape[0])

    def trials_per_session(self) -> np.ndarray:
        """Stimulus trials in each session, shape (n_sessions,)."""
        return self.stimpattern.reshape(self.n_sessions, -1).sum(axis=1).astype(np.int64)

    def session_trials(self, session: int) -> np.ndarray:
        """0-based global trial indices of a 1-based session, shape (n_session_trials,)."""
        counts = self.trials_per_session()
        start = int(counts[: session - 1].sum())
        return np.arange(start, start + int(counts[session - 1]), dtype=np.int64)

    def session_runs(self, session: int) -> np.ndarray:
        """1-based run number of each stimulus trial of a session, shape (n_session_trials,)."""
        pattern = self.stimpattern[session - 1]
        per_run = pattern.sum(axis=1).astype(np.int64)
        return np.repeat(np.arange(1, pattern.shape[0] + 1, dtype=np.int64), per_run)

    def subject_images(self, subject: int) -> np.ndarray:
        """0-based 73k ids of a subject's images, shape (n_images,)."""
        return self.subjectim[subject - 1].astype(np.int64) - 1

    def trial_nsd_ids(self, subject: int, trials: np.ndarray) -> np.ndarray:
        """0-based 73k id shown on each 0-based global trial: ``subjectim[masterordering] - 1``."""
        return self.subjectim[subject - 1, self.masterordering[trials] - 1].astype(np.int64) - 1

    def trial_is_test(self, trials: np.ndarray) -> np.ndarray:
        """True for shared-image (test) trials: ``masterordering <= n_shared``."""
        return self.masterordering[trials] <= self.n_shared


def load_expdesign(path: str | Path) -> ExpDesign:
    """Read ``nsd_expdesign.mat``.

    Parameters
    ----------
    path : path-like
        The MATLAB v5 file.

    Returns
    -------
    design : ExpDesign

    Raises
    ------
    NSDMissingFileError
        If the file is absent.
    NSDFormatError
        If a field is missing or the shapes disagree.
    """
    from scipy.io import loadmat

    path = Path(path)
    if not path.exists():
        raise missing(path, "NSD design file (nsd_expdesign.mat)", _DOWNLOAD_FIX)
    try:
        mat = loadmat(path)
    except Exception as exc:  # scipy raises several types for broken files
        raise NSDFormatError(
            f"Could not read the NSD design file {path} as a MATLAB v5 file ({exc}). "
            "Download it again."
        ) from exc
    fields = ("masterordering", "subjectim", "sharedix", "stimpattern")
    absent = [f for f in fields if f not in mat]
    if absent:
        raise NSDFormatError(
            f"NSD design file {path} lacks the field(s) {absent}; expected {list(fields)}. "
            "Download nsd_expdesign.mat again."
        )
    design = ExpDesign(
        masterordering=np.asarray(mat["masterordering"]).ravel().astype(np.int64),
        subjectim=np.atleast_2d(np.asarray(mat["subjectim"])).astype(np.int64),
        sharedix=np.asarray(mat["sharedix"]).ravel().astype(np.int64),
        stimpattern=np.asarray(mat["stimpattern"]).astype(np.int64),
        path=path,
    )
    if design.stimpattern.ndim != 3:
        raise NSDFormatError(
            f"stimpattern in {path} has shape {design.stimpattern.shape}; expected "
            "(n_sessions, n_runs, n_slots)."
        )
    total = int(design.trials_per_session().sum())
    if total > design.masterordering.size:
        raise NSDFormatError(
            f"stimpattern in {path} holds {total} stimulus trials but masterordering only "
            f"{design.masterordering.size}; the design file is inconsistent."
        )
    return design


def load_stim_info(path: str | Path):
    """Read ``nsd_stim_info_merged.csv`` as a DataFrame indexed by ``nsdId`` (0-based).

    Raises
    ------
    NSDMissingFileError
        If the file is absent.
    NSDFormatError
        If ``nsdId``, ``cocoId`` or ``cocoSplit`` columns are missing.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise missing(path, "NSD stimulus information (nsd_stim_info_merged.csv)", _DOWNLOAD_FIX)
    frame = pd.read_csv(path)
    need = ("nsdId", "cocoId", "cocoSplit")
    absent = [c for c in need if c not in frame.columns]
    if absent:
        raise NSDFormatError(
            f"{path} lacks the column(s) {absent}; expected at least {list(need)}. "
            "Download nsd_stim_info_merged.csv again."
        )
    return frame.set_index("nsdId", drop=False)


def load_coco_captions(folder: str | Path) -> dict[int, list[str]] | None:
    """COCO captions by COCO image id from ``captions_{train,val}2017.json`` in ``folder``.

    Returns ``None`` when neither file exists (the caller decides how to report it).
    """
    import json

    from lib.nsd.layout import COCO_CAPTION_FILES

    folder = Path(folder)
    files = [folder / name for name in COCO_CAPTION_FILES if (folder / name).exists()]
    if not files:
        return None
    captions: dict[int, list[str]] = {}
    for file in files:
        with open(file) as fh:
            data = json.load(fh)
        for ann in data.get("annotations", []):
            captions.setdefault(int(ann["image_id"]), []).append(str(ann["caption"]).strip())
    return captions
