"""Where every NSD file lives, relative to an NSD root (DESIGN.md §5).

The same relative paths are the keys of NSD's public S3 bucket, so :mod:`lib.nsd.download`
fetches exactly what :func:`lib.nsd.prepare_subject` reads.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lib.config import subject_name

#: ROI files read next to the betas (``nsdgeneral`` is required, the others are optional).
ROI_FILES = (
    "nsdgeneral",
    "prf-visualrois",
    "floc-faces",
    "floc-bodies",
    "floc-places",
    "floc-words",
)

#: Label tables of each ROI file (NSD's conventions; 0 = unlabeled, -1 = outside the brain).
ROI_LABELS: dict[str, dict[int, str]] = {
    "nsdgeneral": {1: "nsdgeneral"},
    "prf-visualrois": {1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"},
    "floc-faces": {1: "OFA", 2: "FFA-1", 3: "FFA-2", 4: "mTL-faces", 5: "aTL-faces"},
    "floc-bodies": {1: "EBA", 2: "FBA-1", 3: "FBA-2", 4: "mTL-bodies"},
    "floc-places": {1: "OPA", 2: "PPA", 3: "RSC"},
    "floc-words": {1: "OWFA", 2: "VWFA-1", 3: "VWFA-2", 4: "mfs-words", 5: "mTL-words"},
}

EXPDESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
STIM_INFO = "nsddata/experiments/nsd/nsd_stim_info_merged.csv"
STIMULI = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
ANNOTATIONS = "annotations"
COCO_CAPTION_FILES = ("captions_train2017.json", "captions_val2017.json")
BETAS_DIR = "nsddata_betas/ppdata/{subj}/func1pt8mm/betas_fithrf_GLMdenoise_RR"
BETAS_FILE = "betas_session{session:02d}.nii.gz"
ROI_DIR = "nsddata/ppdata/{subj}/func1pt8mm/roi"
#: NSD's map from MNI voxels to func1pt8mm coordinates (for surface maps of real data).
MNI_TRANSFORM = "nsddata/ppdata/{subj}/transforms/func1pt8-to-MNI.nii.gz"

_SESSION_RE = re.compile(r"^betas_session(\d+)\.nii(\.gz)?$")


@dataclass(frozen=True)
class NSDLayout:
    """Paths of the NSD files under ``root``.

    Parameters
    ----------
    root : path-like
        The NSD root, holding ``nsddata/``, ``nsddata_betas/``, ``nsddata_stimuli/`` and
        ``annotations/``.
    """

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    # --- experiment-wide files ---------------------------------------------------------
    @property
    def expdesign(self) -> Path:
        """``nsd_expdesign.mat`` (MATLAB v5: masterordering, subjectim, sharedix, stimpattern)."""
        return self.root / EXPDESIGN

    @property
    def stim_info(self) -> Path:
        """``nsd_stim_info_merged.csv`` (nsdId, cocoId, cocoSplit, shared1000, subjectK...)."""
        return self.root / STIM_INFO

    @property
    def stimuli(self) -> Path:
        """``nsd_stimuli.hdf5`` holding ``imgBrick`` of shape (n_73k, H, W, 3) uint8."""
        return self.root / STIMULI

    @property
    def annotations(self) -> Path:
        """Folder of the COCO caption annotations (``captions_{train,val}2017.json``)."""
        return self.root / ANNOTATIONS

    # --- per-subject files -----------------------------------------------------------
    def betas_dir(self, subject: int | str) -> Path:
        """Folder of a subject's single-trial betas (betas_fithrf_GLMdenoise_RR, 1.8 mm)."""
        return self.root / BETAS_DIR.format(subj=subject_name(subject))

    def betas(self, subject: int | str, session: int) -> Path:
        """Betas of one session: ``betas_sessionNN.nii.gz`` (an uncompressed ``.nii`` also
        works)."""
        path = self.betas_dir(subject) / BETAS_FILE.format(session=session)
        if not path.exists() and path.with_suffix("").exists():
            return path.with_suffix("")
        return path

    def sessions_present(self, subject: int | str) -> list[int]:
        """1-based numbers of the sessions whose betas file exists, sorted."""
        folder = self.betas_dir(subject)
        if not folder.is_dir():
            return []
        found = set()
        for entry in folder.iterdir():
            m = _SESSION_RE.match(entry.name)
            if m and entry.is_file():
                found.add(int(m.group(1)))
        return sorted(found)

    def roi(self, subject: int | str, name: str) -> Path:
        """ROI label volume ``<name>.nii.gz`` on the betas grid."""
        return self.root / ROI_DIR.format(subj=subject_name(subject)) / f"{name}.nii.gz"

    def mni_transform(self, subject: int | str) -> Path:
        """``func1pt8-to-MNI.nii.gz``: see :func:`lib.plotting.nsd_func_to_mni`."""
        return self.root / MNI_TRANSFORM.format(subj=subject_name(subject))

    # --- the S3 keys of everything preparation needs --------------------------------------
    @staticmethod
    def keys(subject: int | str, sessions, stimuli: bool = True) -> list[str]:
        """Relative paths (= S3 keys) of the files needed to prepare one subject.

        Parameters
        ----------
        subject : int or str
            Subject number (1-8) or ``"subjXX"``.
        sessions : iterable of int
            1-based session numbers.
        stimuli : bool
            Include the 39 GB stimulus brick (needed only to look at images).
        """
        subj = subject_name(subject)
        keys = [EXPDESIGN, STIM_INFO]
        if stimuli:
            keys.append(STIMULI)
        keys += [f"{ROI_DIR.format(subj=subj)}/{name}.nii.gz" for name in ROI_FILES]
        keys.append(MNI_TRANSFORM.format(subj=subj))
        keys += [
            f"{BETAS_DIR.format(subj=subj)}/{BETAS_FILE.format(session=s)}" for s in sessions
        ]
        return keys
