"""Read a prepared subject (``prepared.h5`` + ``captions.json``, DESIGN.md §5).

Small arrays (trial labels, voxel indices, ROI labels) are loaded on opening; betas are read
from disk on demand in row blocks, keeping only the voxels asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from lib.config import resolve_path, subject_dir
from lib.nsd.errors import NSDMissingFileError, missing
from lib.nsd.layout import ROI_LABELS, NSDLayout

#: Named groups of labels: name -> (ROI file, labels). Category names take any label > 0.
ROI_GROUPS: dict[str, tuple[str, tuple[int, ...] | None]] = {
    "V1": ("prf-visualrois", (1, 2)),
    "V2": ("prf-visualrois", (3, 4)),
    "V3": ("prf-visualrois", (5, 6)),
    "hV4": ("prf-visualrois", (7,)),
    "visualrois": ("prf-visualrois", None),
    "faces": ("floc-faces", None),
    "bodies": ("floc-bodies", None),
    "places": ("floc-places", None),
    "words": ("floc-words", None),
}
SPLITS = ("train", "test")
DIRECTIONS = ("past", "future", "both")


def _offsets(size: int, direction: str) -> list[int]:
    """Trial offsets of the blocks of a memory window; block 0 is the trial itself."""
    if size < 1:
        raise ValueError(f"size={size}: a memory window holds at least the trial itself (1).")
    if direction == "past":
        return [-k for k in range(size)]
    if direction == "future":
        return list(range(size))
    if direction == "both":
        offs = [0]
        k = 1
        while len(offs) < size:
            offs.append(-k)
            if len(offs) < size:
                offs.append(k)
            k += 1
        return offs
    raise ValueError(f"direction={direction!r}: expected one of {DIRECTIONS}.")


class PreparedSubject:
    """A prepared NSD subject.

    Parameters
    ----------
    path : path-like
        ``prepared.h5``; ``captions.json`` is read from the same folder.
    nsd_root : path-like or None
        NSD root for the stimuli; default the one recorded at preparation time.

    Attributes
    ----------
    nsd_root : Path
    n_voxels : int
    affine : ndarray of shape (4, 4)
    grid_shape : tuple of 3 int
    sessions : list of int
        Sessions the file was prepared from.
    voxel_ijk : ndarray of shape (n_voxels, 3)
    trial, nsd_id, session, run : ndarray of shape (n_trials,) int64
    is_test : ndarray of shape (n_trials,) bool
    zscore : str
    """

    def __init__(self, path, nsd_root=None):
        self.path = Path(path)
        if not self.path.exists():
            raise missing(
                self.path,
                "Prepared subject",
                "Run notebooks/01_data_preparation.ipynb or lib.nsd.prepare_subject first.",
            )
        with h5py.File(self.path, "r") as h5:
            self.trial = h5["trial"][:]
            self.nsd_id = h5["nsd_id"][:]
            self.session = h5["session"][:]
            self.run = h5["run"][:]
            self.is_test = h5["is_test"][:].astype(bool)
            self.voxel_ijk = h5["voxel_ijk"][:]
            self._rois = {k: h5["roi"][k][:] for k in h5["roi"]}
            self.affine = np.asarray(h5.attrs["affine"])
            self.grid_shape = tuple(int(x) for x in h5.attrs["grid_shape"])
            self.sessions = [int(x) for x in h5.attrs["sessions"]]
            self.zscore = str(h5.attrs["zscore"])
            self.captions_status = str(h5.attrs.get("captions", "present"))
            recorded = str(h5.attrs["nsd_root"])
            self.subject = int(h5.attrs.get("subject", 0))
            self._chunk_rows = h5["betas"].chunks[0] if h5["betas"].chunks else 256
        # recorded as given to prepare_subject (relative: from the repository root)
        self.nsd_root = resolve_path(nsd_root if nsd_root is not None else recorded)
        self.n_voxels = int(self.voxel_ijk.shape[0])
        self._captions = None

    @classmethod
    def open(cls, derived_root, dataset: str, subject, nsd_root=None) -> PreparedSubject:
        """Open ``<derived_root>/<dataset>/subjXX/prepared.h5``."""
        return cls(subject_dir(derived_root, dataset, subject) / "prepared.h5", nsd_root=nsd_root)

    def __repr__(self) -> str:
        return (
            f"PreparedSubject({self.path}, trials={self.trial.size}, voxels={self.n_voxels}, "
            f"sessions={self.sessions}, zscore={self.zscore!r})"
        )

    # --- selection helpers -------------------------------------------------------------
    def _split_rows(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: expected one of {SPLITS}.")
        return np.flatnonzero(self.is_test == (split == "test"))

    def _columns(self, roi) -> np.ndarray | None:
        if roi is None:
            return None
        if isinstance(roi, str):
            return np.flatnonzero(self.roi_mask(roi))
        roi = np.asarray(roi)
        if roi.dtype == bool:
            if roi.shape != (self.n_voxels,):
                raise ValueError(f"roi mask has shape {roi.shape}; expected ({self.n_voxels},).")
            return np.flatnonzero(roi)
        return np.sort(roi.astype(np.int64))

    def _read(self, rows: np.ndarray, cols: np.ndarray | None) -> np.ndarray:
        """Betas at sorted ``rows`` (and ``cols``), read in contiguous row blocks."""
        rows = np.asarray(rows, dtype=np.int64)
        n_cols = self.n_voxels if cols is None else cols.size
        out = np.empty((rows.size, n_cols), dtype=np.float32)
        if rows.size == 0:
            return out
        block = max(1, self._chunk_rows) * 16
        with h5py.File(self.path, "r") as h5:
            ds = h5["betas"]
            starts = (rows // block) * block
            for start in np.unique(starts):
                sel = np.flatnonzero(starts == start)
                lo, hi = int(rows[sel].min()), int(rows[sel].max()) + 1
                chunk = ds[lo:hi]
                chunk = chunk[rows[sel] - lo]
                out[sel] = chunk if cols is None else chunk[:, cols]
        return out

    # --- public API -----------------------------------------------------------------------
    def image_ids(self, split: str) -> np.ndarray:
        """Sorted unique nsd ids (0-based) shown in ``split`` ("train" or "test")."""
        return np.unique(self.nsd_id[self._split_rows(split)])

    def trials(self, split: str, roi=None):
        """Single-trial betas of a split, in trial order.

        Returns
        -------
        betas : ndarray of shape (n_trials, n_vox) float32
        nsd_ids : ndarray of shape (n_trials,)
        """
        rows = self._split_rows(split)
        return self._read(rows, self._columns(roi)), self.nsd_id[rows]

    def averaged_betas(self, split: str, roi=None):
        """Betas averaged over the repetitions of each image.

        Returns
        -------
        betas : ndarray of shape (n_images, n_vox) float32
        nsd_ids : ndarray of shape (n_images,), equal to ``image_ids(split)``
        """
        from scipy import sparse

        x, ids = self.trials(split, roi)
        uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        weights = 1.0 / counts[inverse]
        avg = sparse.csr_matrix(
            (weights, (inverse, np.arange(ids.size))), shape=(uniq.size, ids.size)
        )
        return np.asarray(avg @ x, dtype=np.float32), uniq

    def repeats(self, split: str, roi=None) -> np.ndarray:
        """Betas of every repetition of each image, for noise ceilings.

        Returns
        -------
        reps : ndarray of shape (n_images, n_reps, n_vox) float32
            Images in ``image_ids(split)`` order, repetitions in trial order; ``n_reps`` is the
            largest count. Images shown fewer times (e.g. sessions missing) are padded with NaN;
            see :meth:`repeat_counts`.
        """
        x, ids = self.trials(split, roi)
        uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        reps = np.full((uniq.size, int(counts.max()) if counts.size else 0, x.shape[1]), np.nan,
                       dtype=np.float32)
        seen = np.zeros(uniq.size, dtype=np.int64)
        for row, img in enumerate(inverse):
            reps[img, seen[img]] = x[row]
            seen[img] += 1
        return reps

    def repeat_counts(self, split: str) -> np.ndarray:
        """Number of trials of each image of ``image_ids(split)``, shape (n_images,)."""
        return np.unique(self.nsd_id[self._split_rows(split)], return_counts=True)[1]

    def memory_windows(self, split: str, size: int, direction: str = "past", roi=None,
                       zero_test_neighbours: bool = True):
        """Each trial with its ``size - 1`` neighbouring trials of the same run.

        Parameters
        ----------
        split : {"train", "test"}
        size : int
            Number of blocks, the trial itself included (1 = the trial alone).
        direction : {"past", "future", "both"}
            ``"past"``: trials t, t-1, ..., t-size+1; ``"future"``: t, t+1, ...; ``"both"``:
            t, t-1, t+1, t-2, t+2, ... (``size`` blocks in all).
        roi : str, bool mask or None
        zero_test_neighbours : bool
            For ``split="train"``, neighbours that are test trials are zeroed, so that no
            test-image response enters a training input (science hygiene).

        Returns
        -------
        blocks : list of ``size`` ndarrays of shape (n_trials, n_vox) float32
            Block 0 is the trial itself; a neighbour outside the run (run edges, or a missing
            trial) is all zeros.
        nsd_ids : ndarray of shape (n_trials,)
        """
        offsets = _offsets(size, direction)
        rows = self._split_rows(split)
        n = self.trial.size
        neighbours = []
        for off in offsets:
            q = rows + off
            ok = (q >= 0) & (q < n)
            qc = np.clip(q, 0, n - 1)
            ok &= (self.session[qc] == self.session[rows]) & (self.run[qc] == self.run[rows])
            ok &= self.trial[qc] == self.trial[rows] + off
            if split == "train" and zero_test_neighbours:
                ok &= ~self.is_test[qc]
            neighbours.append(np.where(ok, qc, -1))
        needed = np.unique(np.concatenate([q[q >= 0] for q in neighbours]))
        data = self._read(needed, self._columns(roi))
        blocks = []
        for q in neighbours:
            block = np.zeros((rows.size, data.shape[1]), dtype=np.float32)
            valid = q >= 0
            block[valid] = data[np.searchsorted(needed, q[valid])]
            blocks.append(block)
        if split == "train":
            assert not self.is_test[rows].any()
        return blocks, self.nsd_id[rows]

    def roi_names(self) -> list[str]:
        """Names accepted by :meth:`roi_mask` that select at least one voxel."""
        names = ["nsdgeneral"]
        for group, (file, _) in ROI_GROUPS.items():
            if file in self._rois and self.roi_mask(group).any():
                names.append(group)
        for file, table in ROI_LABELS.items():
            if file == "nsdgeneral" or file not in self._rois:
                continue
            for label, name in table.items():
                if name not in names and np.any(self._rois[file] == label):
                    names.append(name)
        return names

    def roi_mask(self, name: str) -> np.ndarray:
        """Boolean mask over the prepared voxels for an ROI name.

        Names: ``"nsdgeneral"`` (all voxels); groups ``"V1"`` (V1v|V1d), ``"V2"``, ``"V3"``,
        ``"hV4"``, ``"faces"``/``"bodies"``/``"places"``/``"words"`` (any label of that floc
        file), a file name such as ``"floc-faces"``; or a single label such as ``"FFA-1"``.
        """
        if name == "nsdgeneral":
            return np.ones(self.n_voxels, dtype=bool)
        if name in self._rois:
            return self._rois[name] > 0
        if name in ROI_GROUPS:
            file, labels = ROI_GROUPS[name]
            self._need(file, name)
            if labels is None:
                return self._rois[file] > 0
            return np.isin(self._rois[file], labels)
        for file, table in ROI_LABELS.items():
            for label, label_name in table.items():
                if label_name == name:
                    self._need(file, name)
                    return self._rois[file] == label
        known = sorted(set(ROI_GROUPS) | {n for t in ROI_LABELS.values() for n in t.values()})
        raise KeyError(f"Unknown ROI name {name!r}; expected one of {known} or a file name.")

    def _need(self, file: str, name: str) -> None:
        if file not in self._rois:
            raise KeyError(
                f"ROI {name!r} needs the ROI file {file}.nii.gz, which was not found when "
                f"{self.path} was prepared. Download it and prepare again."
            )

    def captions(self, nsd_ids) -> list[list[str]]:
        """COCO captions of each image (an empty list where none are known)."""
        if self._captions is None:
            path = self.path.parent / "captions.json"
            self._captions = json.loads(path.read_text()) if path.exists() else {}
        return [list(self._captions.get(str(int(i)), [])) for i in np.ravel(nsd_ids)]

    def input_fingerprint(self, modality: str) -> str:
        """Short tag of what a model sees of this subject, for the names of feature caches.

        ``"vision"``: the stimulus file (``imgBrick``; name, size, modification time);
        ``"language"``: the prepared ``captions.json`` (a hash of its content). ``""`` where the
        input is missing. Rebuilt toy-world stimuli or changed captions thus never serve
        features cached from the old ones, while re-preparing the betas keeps the caches.
        """
        import hashlib

        from lib.io import stat_fingerprint

        if modality == "vision":
            return stat_fingerprint([NSDLayout(self.nsd_root).stimuli])
        if modality == "language":
            path = self.path.parent / "captions.json"
            if not path.is_file():
                return ""
            return "_" + hashlib.sha1(path.read_bytes()).hexdigest()[:8]
        raise ValueError(f"modality must be 'vision' or 'language', got {modality!r}.")

    def images(self, nsd_ids) -> np.ndarray:
        """Stimuli of the given images, read lazily from ``imgBrick``.

        Parameters
        ----------
        nsd_ids : array-like of int
            0-based 73k ids (any order, repeats allowed).

        Returns
        -------
        images : ndarray of shape (n, H, W, 3) uint8
        """
        ids = np.asarray(nsd_ids, dtype=np.int64).ravel()
        path = NSDLayout(self.nsd_root).stimuli
        if not path.exists():
            raise NSDMissingFileError(
                f"NSD stimuli not found: expected {path}. Download nsd_stimuli.hdf5 (python -m "
                "lib.nsd download) or pass nsd_root= to PreparedSubject."
            )
        uniq = np.unique(ids)
        with h5py.File(path, "r") as h5:
            brick = h5["imgBrick"]
            if uniq.size and (uniq[0] < 0 or uniq[-1] >= brick.shape[0]):
                raise ValueError(f"nsd ids must lie in [0, {brick.shape[0]}); got {uniq[[0, -1]]}.")
            # one image at a time: h5py's list indexing built a selection 50x slower (64 ms
            # against 1.2 ms for 32 toy images)
            data = np.empty((uniq.size,) + brick.shape[1:], dtype=brick.dtype)
            for row, nsd_id in enumerate(uniq.tolist()):
                data[row] = brick[nsd_id]
        return data[np.searchsorted(uniq, ids)]

    def to_volume(self, values, fill: float = 0.0):
        """Put voxel values back on the grid.

        Parameters
        ----------
        values : ndarray of shape (n_voxels,) or (n_maps, n_voxels)
        fill : float
            Value outside the prepared voxels.

        Returns
        -------
        img : nibabel.Nifti1Image of shape grid_shape (or grid_shape + (n_maps,)), float32
        """
        import nibabel as nib

        values = np.asarray(values, dtype=np.float32)
        if values.shape[-1] != self.n_voxels or values.ndim > 2:
            raise ValueError(
                f"values has shape {values.shape}; expected ({self.n_voxels},) or (n_maps, "
                f"{self.n_voxels})."
            )
        i, j, k = self.voxel_ijk.T
        if values.ndim == 1:
            vol = np.full(self.grid_shape, fill, dtype=np.float32)
            vol[i, j, k] = values
        else:
            vol = np.full(self.grid_shape + (values.shape[0],), fill, dtype=np.float32)
            vol[i, j, k, :] = values.T
        return nib.Nifti1Image(vol, self.affine)
