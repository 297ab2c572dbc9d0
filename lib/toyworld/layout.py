"""Writers for NSD's raw file layout (DESIGN.md §5), deterministic byte for byte.

Every writer is atomic (temporary file, then rename) and leaves nothing in its output that
changes from run to run: the MATLAB header's creation date is fixed, gzip streams carry
``mtime=0`` and no file name, HDF5 objects carry no timestamps.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np

from lib.io import atomic_path

#: Fixed MATLAB v5 header text (scipy writes the current date there otherwise).
_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: braincap toy world"


def write_expdesign(path: Path, masterordering: np.ndarray, subjectim: np.ndarray,
                    sharedix: np.ndarray, stimpattern: np.ndarray) -> Path:
    """Write ``nsd_expdesign.mat`` (MATLAB v5) shaped like NSD's.

    Parameters
    ----------
    path : Path
    masterordering : ndarray of shape (n_trials,)
        1-based indices into a subject's image list; saved as (1, n_trials).
    subjectim : ndarray of shape (n_subjects, n_images)
        1-based 73k ids; the first ``n_shared`` columns are the shared images.
    sharedix : ndarray of shape (n_shared,)
        1-based 73k ids of the shared images; saved as (1, n_shared).
    stimpattern : ndarray of shape (n_sessions, n_runs, n_slots)
        0/1 stimulus slots.
    """
    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, {
        "masterordering": np.asarray(masterordering, np.float64)[None, :],
        "subjectim": np.asarray(subjectim, np.float64),
        "sharedix": np.asarray(sharedix, np.float64)[None, :],
        "stimpattern": np.asarray(stimpattern, np.float64),  # MATLAB doubles, as NSD
    }, format="5", do_compression=False)
    raw = bytearray(buf.getvalue())
    raw[:116] = _MAT_HEADER.ljust(116, b" ")  # the 116-byte text field holds a date otherwise
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(raw))
    return Path(path)


def write_stim_info(path: Path, frame) -> Path:
    """Write ``nsd_stim_info_merged.csv`` (with NSD's unnamed leading index column)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=True, lineterminator="\n")
    return Path(path)


def write_image_brick(path: Path, images: np.ndarray) -> Path:
    """Write ``nsd_stimuli.hdf5`` with dataset ``imgBrick`` of shape (n, H, W, 3), uint8.

    Chunked one image per chunk (like reading NSD: one image at a time, never the whole brick).
    """
    import h5py

    images = np.ascontiguousarray(images, dtype=np.uint8)
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=False) as f:
        f.create_dataset("imgBrick", data=images, chunks=(1,) + images.shape[1:],
                         track_times=False)
    return Path(path)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, compresslevel: int = 1) -> Path:
    """Write a NIfTI-1 volume (``.nii.gz``) deterministically.

    Parameters
    ----------
    path : Path
        Ends in ``.nii.gz``.
    data : ndarray of shape (X, Y, Z) or (X, Y, Z, T)
        Stored with its own dtype (int16 for betas and ROIs), no scaling.
    affine : ndarray of shape (4, 4)
    compresslevel : int
        gzip level (1: fast; NSD's files are gzip too).
    """
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=4)  # 4 = MNI152
    img.header.set_sform(affine, code=4)
    raw = img.to_bytes()
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(raw, compresslevel=compresslevel, mtime=0))
    return Path(path)


def write_coco_captions(path: Path, images: list[dict], annotations: list[dict],
                        description: str) -> Path:
    """Write a COCO caption annotation file (``captions_{train,val}2017.json``).

    Parameters
    ----------
    images : list of dict
        COCO image records (``id``, ``file_name``, ``height``, ``width`` ...).
    annotations : list of dict
        ``id``, ``image_id`` (the COCO id), ``caption``.
    """
    doc = {
        "info": {"description": description, "version": "1.0", "year": 2017,
                 "contributor": "braincap toy world", "date_created": "2017/09/01"},
        "licenses": [{"id": 1, "name": "CC0 (generated)", "url": ""}],
        "images": images,
        "annotations": annotations,
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
    return Path(path)
