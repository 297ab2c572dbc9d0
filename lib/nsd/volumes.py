"""Streaming reads of NIfTI volumes: one pass, masked on the fly, memory of one chunk.

NSD's betas files hold int16 volumes in Fortran order, so each trial's volume is one contiguous
block of the (decompressed) stream. Reading the stream once, a few dozen volumes at a time, and
keeping only the mask's voxels bounds memory by the masked session instead of the 1 GB volume.
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from lib.nsd.errors import NSDCorruptFileError, NSDGridMismatchError

try:  # Intel ISA-L decompresses gzip about twice as fast as zlib; optional
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _isal_error

    _READ_ERRORS: tuple = (EOFError, zlib.error, gzip.BadGzipFile, OSError, _isal_error)
except ImportError:  # pragma: no cover - depends on the environment
    _gzip = gzip
    _READ_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError)

_FIX = ("Delete it and download it again (`python -m lib.nsd download ...` resumes and "
        "re-checks sizes).")


def load_header(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI file lazily (header only), turning read errors into clear ones."""
    path = Path(path)
    try:
        return nib.load(path)
    except Exception as exc:
        raise NSDCorruptFileError(
            f"Could not read the NIfTI header of {path} ({type(exc).__name__}: {exc}). {_FIX}"
        ) from exc


def load_label_volume(path: str | Path, grid_shape, affine=None, what: str = "ROI") -> np.ndarray:
    """Read an integer label volume and check that it lies on the betas grid.

    Parameters
    ----------
    path : path-like
        ``.nii.gz`` label file.
    grid_shape : tuple of 3 int
        Grid of the betas.
    affine : ndarray of shape (4, 4) or None
        Affine of the betas; checked when given.

    Returns
    -------
    labels : ndarray of shape grid_shape, int32
    """
    img = load_header(path)
    if tuple(img.shape[:3]) != tuple(grid_shape) or len(img.shape) not in (3, 4):
        raise NSDGridMismatchError(
            f"{what} file {path} has grid {tuple(img.shape)}, but the betas grid is "
            f"{tuple(grid_shape)}. Use the func1pt8mm ROI files of the same subject "
            "(nsddata/ppdata/subjXX/func1pt8mm/roi/)."
        )
    if affine is not None and not np.allclose(img.affine, affine, atol=1e-2):
        # same grid, different header: NSD's own files agree, so say so but do not stop
        warnings.warn(
            f"{what} file {path} has affine\n{np.round(img.affine, 3)}\nbut the betas have\n"
            f"{np.round(affine, 3)}; the grids have the same shape, so voxel indices are used "
            "as they are (the betas' affine is recorded). Check that both are func1pt8mm files "
            "of the same subject.",
            stacklevel=3,
        )
    try:
        data = np.asarray(img.dataobj)
    except Exception as exc:
        raise NSDCorruptFileError(f"Could not read {what} file {path} ({exc}). {_FIX}") from exc
    if data.ndim == 4:
        data = data[..., 0]
    return np.rint(data).astype(np.int32)


def _check_betas_shape(path: Path, shape: tuple, grid_shape, n_volumes) -> None:
    """A clear error unless ``shape`` is (X, Y, Z, T) on ``grid_shape`` with T = n_volumes."""
    if len(shape) != 4 or shape[:3] != tuple(grid_shape):
        raise NSDGridMismatchError(
            f"Betas file {path} has shape {shape}; expected a 4-D volume on the grid "
            f"{tuple(grid_shape)} (the grid of the other sessions and the ROI files)."
        )
    if n_volumes is not None and shape[3] != n_volumes:
        raise NSDGridMismatchError(
            f"Betas file {path} holds {shape[3]} trials, but the design (stimpattern) has "
            f"{n_volumes} stimulus trials in this session. Check that the file belongs to this "
            "session and subject, or download it again."
        )


def _stream_into(path: Path, fh, out: np.ndarray, flat: np.ndarray, dtype, n_vol_elems: int,
                 chunk_bytes: int) -> None:
    """Fill ``out`` (T, n_voxels) from the open stream ``fh``, a few volumes at a time."""
    vol_bytes = n_vol_elems * dtype.itemsize
    n_total = out.shape[0]
    per_chunk = max(1, chunk_bytes // vol_bytes)
    buf = bytearray(per_chunk * vol_bytes)
    view = memoryview(buf)
    t = 0
    while t < n_total:
        n = min(per_chunk, n_total - t)
        want = n * vol_bytes
        got = 0
        while got < want:
            k = fh.readinto(view[got:want])
            if not k:
                break
            got += k
        if got < want:
            raise NSDCorruptFileError(
                f"Betas file {path} ended after {t + got // vol_bytes} of {n_total} "
                f"volumes (truncated). {_FIX}"
            )
        block = np.frombuffer(buf, dtype=dtype, count=n * n_vol_elems)
        out[t : t + n] = block.reshape(n, n_vol_elems)[:, flat]
        t += n


def read_masked_volumes(
    path: str | Path,
    grid_shape,
    ijk: np.ndarray,
    n_volumes: int | None = None,
    chunk_bytes: int = 32 * 2**20,
) -> np.ndarray:
    """Read every volume of a 4-D NIfTI file at the voxels ``ijk`` in one streaming pass.

    Parameters
    ----------
    path : path-like
        ``.nii`` or ``.nii.gz`` file of shape (X, Y, Z, T).
    grid_shape : tuple of 3 int
        Expected (X, Y, Z).
    ijk : ndarray of shape (n_voxels, 3)
        Voxel indices to keep, in the order wanted in the output.
    n_volumes : int or None
        Expected T; checked when given.
    chunk_bytes : int
        Size of the decompressed block read at once (bounds extra memory).

    Returns
    -------
    values : ndarray of shape (T, n_voxels), float32
        Stored values with the header's scaling (slope, intercept) applied.
    """
    path = Path(path)
    img = load_header(path)
    shape = tuple(int(s) for s in img.shape)
    _check_betas_shape(path, shape, grid_shape, n_volumes)
    proxy = img.dataobj
    if getattr(proxy, "order", "F") != "F":  # pragma: no cover - NIfTI is Fortran order on disk
        raise NSDCorruptFileError(f"{path}: unexpected array order {proxy.order!r}.")
    flat = np.ravel_multi_index(tuple(np.asarray(ijk).T), shape[:3], order="F")
    slope = float(proxy.slope) if np.isfinite(proxy.slope) and proxy.slope != 0 else 1.0
    inter = float(proxy.inter) if np.isfinite(proxy.inter) else 0.0

    out = np.empty((shape[3], flat.size), dtype=np.float32)
    opener = _gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            fh.seek(int(proxy.offset))
            _stream_into(path, fh, out, flat, np.dtype(proxy.dtype),
                         int(np.prod(shape[:3])), chunk_bytes)
    except _READ_ERRORS as exc:
        if isinstance(exc, NSDCorruptFileError):
            raise
        raise NSDCorruptFileError(
            f"Could not read betas file {path} to the end ({type(exc).__name__}: {exc}); "
            f"it is probably truncated or corrupt. {_FIX}"
        ) from exc
    if slope != 1.0 or inter != 0.0:
        out *= slope
        out += inter
    return out
