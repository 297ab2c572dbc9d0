"""The simulated brain's anatomy: an MNI 4 mm grid, NSD's ROIs and early visual retinotopy.

The grid is nilearn's bundled MNI152 template resampled to 4 mm, so volumes land on
nilearn's fsaverage surfaces. ROIs follow NSD's files and label conventions
(``prf-visualrois``, ``floc-faces``, ``floc-bodies``, ``floc-places``, ``floc-words``,
``nsdgeneral``) and sit where they sit in a real brain: V1-V3 around the calcarine sulcus
(ventral bank = upper visual field, left hemisphere = right visual field, eccentricity growing
anteriorly), hV4 lateral-ventral to V3, category areas in ventral and lateral
occipito-temporal cortex, in both hemispheres (words mostly left). Each subject's ROIs move by
a little subject-specific jitter. What the voxels respond to is :mod:`lib.toyworld.brain`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.nsd.layout import ROI_LABELS

#: The ROI files the simulator draws (NSD's label tables live in :data:`lib.nsd.layout.ROI_LABELS`;
#: ``nsdgeneral`` is drawn separately, as the mask around them).
_DRAWN_ROI_FILES = tuple(f for f in ROI_LABELS if f != "nsdgeneral")
#: Centres (right hemisphere, MNI mm; mirrored for the left) and radii (mm) of category ROIs.
#: Words are larger on the left (``radius_left``).
_ROI_CENTRES = {
    "floc-faces": [("OFA", (44, -76, -8), 8), ("FFA-1", (40, -56, -18), 8),
                   ("FFA-2", (40, -44, -20), 7), ("mTL-faces", (30, -32, -22), 6),
                   ("aTL-faces", (36, -8, -32), 6)],
    "floc-bodies": [("EBA", (48, -70, 2), 9), ("FBA-1", (43, -50, -14), 7),
                    ("FBA-2", (44, -40, -16), 6), ("mTL-bodies", (33, -36, -18), 6)],
    "floc-places": [("OPA", (34, -84, 22), 8), ("PPA", (26, -46, -10), 8),
                    ("RSC", (14, -54, 12), 7)],
    "floc-words": [("OWFA", (44, -72, -12), 6), ("VWFA-1", (44, -58, -14), 6),
                   ("VWFA-2", (44, -46, -12), 6), ("mfs-words", (36, -40, -16), 5),
                   ("mTL-words", (30, -28, -20), 5)],
}
_WORDS_LEFT_GAIN = 1.5  # left-hemisphere word ROIs are this much larger (radius)
#: The calcarine sulcus as a segment (right hemisphere; mm): posterior (fovea) -> anterior.
_CALCARINE = ((10.0, -102.0, -2.0), (12.0, -66.0, 8.0))
#: Outer radius (mm) of V1, V2, V3 around the calcarine axis.
_EV_RADII = (8.0, 14.0, 20.0)
#: hV4 centre (right hemisphere) and radius.
_HV4 = ((30.0, -78.0, -14.0), 8.0)


# --------------------------------------------------------------------------- grid
@dataclass
class BrainGrid:
    """The voxel grid and its tissue masks.

    Attributes
    ----------
    affine : ndarray of shape (4, 4)
        Voxel -> MNI mm.
    shape : tuple of int
        Grid shape (X, Y, Z).
    brain : ndarray of shape (X, Y, Z), bool
        Inside the brain.
    cortex : ndarray of shape (X, Y, Z), bool
        Grey matter (probability > 0.5; cortex and cerebellum) inside the brain.
    """

    affine: np.ndarray
    shape: tuple
    brain: np.ndarray
    cortex: np.ndarray

    def mm(self) -> np.ndarray:
        """MNI coordinates of every voxel centre, ndarray of shape (X, Y, Z, 3)."""
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in self.shape], indexing="ij"), -1)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]


def _mni152_files():
    """Paths of nilearn's bundled 1 mm MNI152 (ICBM 2009a) T1 and grey-matter templates.

    Found without importing nilearn (whose import takes seconds).
    """
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("nilearn is required for the toy world's MNI152 template; "
                          "install it with `pip install nilearn`.")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    t1 = data / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    gm = data / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
    if not (t1.exists() and gm.exists()):
        raise FileNotFoundError(
            f"nilearn's bundled MNI152 templates were not found in {data}; expected {t1.name} "
            "and {gm.name} (nilearn >= 0.10 ships them). Reinstall nilearn.")
    return t1, gm


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    pad = [(0, (-n) % k) for n in a.shape]
    a = np.pad(a, pad)
    x, y, z = (n // k for n in a.shape)
    return a.reshape(x, k, y, k, z, k).mean((1, 3, 5))


def make_grid(voxel_size: float = 4.0) -> BrainGrid:
    """Block-average nilearn's bundled 1 mm MNI152 templates to ``voxel_size`` mm.

    The brain is where the T1 template exceeds 0.2 of its maximum (as
    ``nilearn.datasets.load_mni152_brain_mask``), the cortex where the grey-matter
    probability exceeds 0.5, both in at least half of the 1 mm voxels of a block.

    Parameters
    ----------
    voxel_size : float
        Isotropic voxel size in mm; an integer number of millimetres.

    Returns
    -------
    grid : BrainGrid
    """
    import nibabel as nib

    k = int(round(voxel_size))
    if k != voxel_size or k < 1:
        raise ValueError(f"voxel_size must be a whole number of mm, got {voxel_size}")
    t1_path, gm_path = _mni152_files()
    t1 = nib.load(t1_path)
    gm = nib.load(gm_path)
    t1_data = np.asarray(t1.dataobj, dtype=np.float32)
    gm_data = np.asarray(gm.dataobj, dtype=np.float32)
    brain = _block_mean(t1_data > 0.2 * t1_data.max(), k) >= 0.5
    cortex = _block_mean(gm_data > 0.5 * gm_data.max(), k) >= 0.5
    src = t1.affine
    # crop to the brain's bounding box plus one voxel (NSD's grids, too, hug the head)
    nz = np.argwhere(brain)
    lo = np.maximum(nz.min(0) - 1, 0)
    hi = np.minimum(nz.max(0) + 2, brain.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    brain, cortex = brain[crop], cortex[crop]
    affine = np.diag([float(k), float(k), float(k), 1.0])
    # centre of each block, shifted by the crop
    affine[:3, 3] = src[:3, 3] + ((k - 1) / 2 + k * lo) * np.diag(src)[:3]
    return BrainGrid(affine=affine, shape=brain.shape, brain=brain, cortex=cortex & brain)


# --------------------------------------------------------------------------- ROIs
@dataclass
class RoiSet:
    """ROI volumes of one subject plus the retinotopy of early visual voxels.

    Attributes
    ----------
    volumes : dict of str -> ndarray of shape (X, Y, Z), int16
        One volume per NSD ROI file (``nsdgeneral`` included), NSD label conventions.
    eccentricity, polar_angle : ndarray of shape (X, Y, Z), float
        For V1-V3 and hV4 voxels (NaN elsewhere): eccentricity in image widths and polar
        angle in radians (0 = right horizontal meridian, pi/2 = upper vertical meridian).
    """

    volumes: dict
    eccentricity: np.ndarray
    polar_angle: np.ndarray


def _segment_coords(p, a, b):
    """Distance of points ``p`` (..., 3) from segment a-b, and position t in [0, 1] along it."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    foot = a + t[..., None] * ab
    return np.linalg.norm(p - foot, axis=-1), t, p - foot


def _nsdgeneral(grid: BrainGrid, mm: np.ndarray) -> np.ndarray:
    x, y, z = mm[..., 0], mm[..., 1], mm[..., 2]
    cerebellum = (y > -96) & (y < -30) & (z < -26)
    cerebellum |= (np.abs(x) < 20) & (y > -82) & (y < -40) & (z < -6)
    # occipital and posterior temporal / parietal cortex; ventral temporal reaches further forward
    region = ((y <= -32) & (z < -5)) | ((y <= -58) & (z >= -5))
    region &= (z >= -30) & (z <= 24) & (np.abs(x) >= 6)
    return grid.cortex & region & ~cerebellum


def make_rois(grid: BrainGrid, rng: np.random.Generator, jitter_mm: float = 2.0) -> RoiSet:
    """Draw one subject's ROIs: anatomically placed, with a little subject-specific jitter.

    Parameters
    ----------
    grid : BrainGrid
    rng : numpy.random.Generator
        Subject-specific generator (ROI centres move by about ``jitter_mm``).
    jitter_mm : float
        Standard deviation of the subject-specific shift of every ROI centre.

    Returns
    -------
    rois : RoiSet
    """
    mm = grid.mm()
    outside = ~grid.brain
    gen = np.zeros(grid.shape, np.int16)
    gen[_nsdgeneral(grid, mm)] = 1
    gen[outside] = -1
    ev, ecc, ang = _early_visual(grid, mm, rng, jitter_mm)
    ev[outside] = -1
    vols = {"nsdgeneral": gen, "prf-visualrois": ev,
            **_category_rois(grid, mm, ev > 0, rng, jitter_mm)}
    # like NSD's nsdgeneral, the mask covers the posterior visual ROIs
    posterior = mm[..., 1] <= -32
    for fname in _DRAWN_ROI_FILES:
        gen[(vols[fname] > 0) & posterior] = 1
    return RoiSet(volumes=vols, eccentricity=ecc, polar_angle=ang)


def _early_visual(grid: BrainGrid, mm: np.ndarray, rng: np.random.Generator,
                  jitter_mm: float) -> tuple:
    """V1-V3 around each hemisphere's calcarine sulcus and hV4 beside them: the
    ``prf-visualrois`` labels (X, Y, Z) int16 (1-7, 0 elsewhere), eccentricity and polar
    angle (X, Y, Z) (NaN elsewhere)."""
    cortex = grid.cortex
    ev = np.zeros(grid.shape, np.int16)
    ecc = np.full(grid.shape, np.nan)
    ang = np.full(grid.shape, np.nan)
    for hemi in (-1, 1):  # -1 = left hemisphere (x < 0) -> right visual field
        a, b = (np.array(p) * [hemi, 1, 1] + rng.normal(0, jitter_mm, 3) for p in _CALCARINE)
        dist, t, off = _segment_coords(mm, a, b)
        in_hemi = (np.sign(mm[..., 0]) == hemi) & cortex & (mm[..., 1] <= b[1] + 4)
        dorsal = off[..., 2] > 0
        r1, r2, r3 = _EV_RADII
        for k, (lo, hi) in enumerate(((0, r1), (r1, r2), (r2, r3))):
            sel = in_hemi & (dist >= lo) & (dist < hi) & (ev == 0)
            ev[sel & ~dorsal] = 2 * k + 1  # ventral
            ev[sel & dorsal] = 2 * k + 2
            frac = np.clip((dist - lo) / (hi - lo), 0, 1)
            # V1: horizontal meridian in the fundus; V2 mirrors; V3 mirrors again
            theta = (np.pi / 2) * (frac if k != 1 else 1 - frac)
            e = 0.02 + 0.5 * t  # eccentricity grows anteriorly (image widths)
            upper = ~dorsal  # ventral bank represents the upper visual field
            phi = np.where(upper, theta, -theta)
            phi = np.where(hemi < 0, phi, np.pi - phi)  # left hemisphere -> right field
            ecc[sel] = e[sel]
            ang[sel] = phi[sel]
        # hV4: lateral-ventral to ventral V3
        c4 = np.array(_HV4[0]) * [hemi, 1, 1] + rng.normal(0, jitter_mm, 3)
        d4 = np.linalg.norm(mm - c4, axis=-1)
        sel = (d4 < _HV4[1]) & cortex & (ev == 0) & (np.sign(mm[..., 0]) == hemi)
        ev[sel] = 7
        ecc[sel] = np.clip(0.05 + 0.4 * d4[sel] / _HV4[1], 0, 0.5)
        ang[sel] = np.where(hemi < 0, 0.0, np.pi) + rng.normal(0, 0.6, sel.sum())
    return ev, ecc, ang


def _category_rois(grid: BrainGrid, mm: np.ndarray, taken: np.ndarray,
                   rng: np.random.Generator, jitter_mm: float) -> dict:
    """The floc volumes (X, Y, Z) int16 of :data:`_ROI_CENTRES`, each voxel labelled with its
    nearest centre (relative to the ROI's radius) in cortex not ``taken`` by early visual
    areas; -1 outside the brain."""
    vols = {}
    for fname, entries in _ROI_CENTRES.items():
        best = np.full(grid.shape, np.inf)
        vol = np.zeros(grid.shape, np.int16)
        for label, (_, centre, radius) in enumerate(entries, start=1):
            for hemi in (-1, 1):
                r = radius * (_WORDS_LEFT_GAIN if (fname == "floc-words" and hemi < 0) else 1.0)
                c = np.array(centre, float) * [hemi, 1, 1] + rng.normal(0, jitter_mm, 3)
                d = np.linalg.norm(mm - c, axis=-1) / r
                sel = (d < 1) & (d < best) & grid.cortex & ~taken
                vol[sel] = label
                best[sel] = d[sel]
        vol[~grid.brain] = -1
        vols[fname] = vol
    return vols
