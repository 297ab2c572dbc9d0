"""A simulated visual cortex on an MNI 4 mm grid: anatomy, ROIs, voxel tuning, responses.

The grid is nilearn's bundled MNI152 template resampled to 4 mm, so volumes land on
nilearn's fsaverage surfaces. ROIs follow NSD's files and label conventions
(``prf-visualrois``, ``floc-faces``, ``floc-bodies``, ``floc-places``, ``floc-words``,
``nsdgeneral``) and sit where they sit in a real brain: V1-V3 around the calcarine sulcus
(ventral bank = upper visual field, left hemisphere = right visual field, eccentricity growing
anteriorly), hV4 lateral-ventral to V3, category areas in ventral and lateral
occipito-temporal cortex, in both hemispheres (words mostly left).

Voxel responses (percent signal change) follow the logic of visual cortex:

- V1-V3: a Gaussian receptive field over local luminance contrast and colour energy
  computed from the pixels; the field grows from V1 to V3 and with eccentricity;
- hV4: a larger receptive field over the shapes and colours of the objects in it;
- faces / bodies / words: the presence and size of their category (some cross-talk,
  a preference for the contralateral hemifield); places: the place, more so when
  less of it is hidden by objects;
- a shared semantic component: what is in the scene, as a caption would say it, on the main
  axes of the world's scene statistics (:func:`semantic_axes`);
- trial noise, a global per-trial fluctuation, and session-specific offsets and gains; the
  noise level is calibrated once on NSD's published noise ceiling of nsdgeneral
  (:data:`NSD_NOISE_CEILING`, :func:`target_snr`).

A *null world* keeps all of this but drives each trial with the signal of another, random
trial's image (:func:`null_signal_rows`).

Everything is drawn from explicit generators, so a seed gives the same brain bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.nsd.layout import ROI_LABELS

from .scenes import COLOR_NAMES, KINDS, PLACES

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

#: Receptive-field size (sigma, fraction of the image width) at zero eccentricity, per area.
RF_SIGMA0 = {"V1": 0.035, "V2": 0.05, "V3": 0.07, "hV4": 0.16}
#: Growth of RF sigma with eccentricity (image widths per image width).
RF_SLOPE = {"V1": 0.12, "V2": 0.18, "V3": 0.26, "hV4": 0.4}
#: Published NSD noise ceilings: the ONE place the toy world's noise level comes from.
#:
#: ``nsdgeneral``: median noise ceiling over the nsdgeneral ROI (fsaverage vertices) of the b3
#: betas (``betas_fithrf_GLMdenoise_RR``), for responses averaged over 3 trials, in percent,
#: per NSD subject 1-8, and their mean. Source: Allen et al. (2022), "A massive 7T fMRI
#: dataset to bridge cognitive neuroscience and artificial intelligence", Nature Neuroscience
#: 25:116-126, Fig. 3 (quantitative summary of the noise-ceiling maps, b1/b2/b3 per subject);
#: the numbers are that panel's source data, ``mainfigures/MAPOFSIGNAL/results.mat``
#: (``summary[:, 2]``) in the paper's code repository, github.com/cvnlab/nsddatapaper (commit
#: 789a7c3), whose ``MAPOFSIGNALnotes.m`` prints the mean, 36.199%.
#:
#: Category ROIs (faces, bodies, places, words) and V1-hV4: no published per-ROI value was
#: found (the paper shows them only as maps), so the *ratios* between voxel classes in
#: :data:`SNR_RELATIVE` are NOT calibrated (source not found); only their overall level is.
NSD_NOISE_CEILING = {
    "roi": "nsdgeneral",
    "percent_per_subject": (41.89, 43.84, 35.77, 31.60, 46.86, 36.63, 29.17, 23.82),
    "percent": 36.20,
    "n_average": 3,
    "betas": "b3 (betas_fithrf_GLMdenoise_RR)",
    "statistic": "median over nsdgeneral vertices (fsaverage), mean over the 8 subjects",
    "source": "Allen et al. 2022, Nat. Neurosci. 25:116-126, Fig. 3; source data "
              "mainfigures/MAPOFSIGNAL/results.mat, github.com/cvnlab/nsddatapaper",
}


def target_snr(percent: float = NSD_NOISE_CEILING["percent"],
               n_average: int = NSD_NOISE_CEILING["n_average"]) -> float:
    """Signal-to-noise variance ratio whose noise ceiling is ``percent`` (NSD's formula).

    NSD's noise ceiling of responses averaged over ``n`` trials is
    ``NC = ncsnr^2 / (ncsnr^2 + 1/n)`` with ``ncsnr^2`` = signal variance / noise variance,
    so ``ncsnr^2 = NC / (n (1 - NC))``: 36.2% over 3 trials gives 0.189.
    """
    nc = percent / 100.0
    if not 0 <= nc < 1:
        raise ValueError(f"noise ceiling must be a percentage in [0, 100), got {percent}")
    return nc / (n_average * (1.0 - nc))


#: Relative signal-to-noise variance ratio per voxel class (NOT calibrated: no published per-ROI
#: source found; see :data:`NSD_NOISE_CEILING`). :func:`make_tuning` scales them so that the
#: median over a subject's nsdgeneral voxels is :func:`target_snr` (the published nsdgeneral
#: noise ceiling); brain outside nsdgeneral and the ROIs carries no signal. (The ratios are
#: those of the hand-set levels used before the calibration, divided by the ``general`` level.)
SNR_RELATIVE = {"V1": 3.0, "V2": 3.0, "V3": 2.67, "hV4": 2.0, "face": 2.33, "body": 2.0,
                "word": 2.0, "place": 2.0, "general": 1.0, "outside": 0.0}
#: Resolution of the pixel feature maps (contrast and colour energy).
FEATURE_RES = 32


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
    cortex = grid.cortex
    outside = ~grid.brain
    vols = {}

    gen = _nsdgeneral(grid, mm)
    v = np.zeros(grid.shape, np.int16)
    v[gen] = 1
    v[outside] = -1
    vols["nsdgeneral"] = v

    # early visual cortex around the calcarine sulcus, per hemisphere
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
    ev[outside] = -1
    vols["prf-visualrois"] = ev

    taken = (ev > 0)
    for fname, entries in _ROI_CENTRES.items():
        best = np.full(grid.shape, np.inf)
        vol = np.zeros(grid.shape, np.int16)
        for label, (_, centre, radius) in enumerate(entries, start=1):
            for hemi in (-1, 1):
                r = radius * (_WORDS_LEFT_GAIN if (fname == "floc-words" and hemi < 0) else 1.0)
                c = np.array(centre, float) * [hemi, 1, 1] + rng.normal(0, jitter_mm, 3)
                d = np.linalg.norm(mm - c, axis=-1) / r
                sel = (d < 1) & (d < best) & cortex & ~taken
                vol[sel] = label
                best[sel] = d[sel]
        vol[outside] = -1
        vols[fname] = vol
    # like NSD's nsdgeneral, the mask covers the posterior visual ROIs
    gen = vols["nsdgeneral"]
    posterior = mm[..., 1] <= -32
    for fname in _DRAWN_ROI_FILES:
        gen[(vols[fname] > 0) & posterior] = 1
    return RoiSet(volumes=vols, eccentricity=ecc, polar_angle=ang)


# --------------------------------------------------------------------------- stimulus features
def pixel_features(images: np.ndarray, res: int = FEATURE_RES) -> dict:
    """Local luminance-contrast and colour energy maps computed from the pixels.

    Parameters
    ----------
    images : ndarray of shape (n_images, H, W, 3), uint8
    res : int
        Output map resolution (H and W must be multiples of it).

    Returns
    -------
    features : dict
        ``contrast`` and ``color``: ndarray of shape (n_images, res, res), float32.
        Contrast = gradient magnitude of luminance; colour = chroma (distance from grey
        in an opponent space); both block-averaged to ``res`` x ``res``.
    """
    x = images.astype(np.float32) / 255.0
    n, h, w, _ = x.shape
    if h % res or w % res:
        raise ValueError(f"image size {h}x{w} is not a multiple of the feature resolution {res}")
    lum = x.mean(-1)
    gy, gx = np.gradient(lum, axis=(1, 2))
    contrast = np.hypot(gx, gy)
    rg = x[..., 0] - x[..., 1]
    by = x[..., 2] - 0.5 * (x[..., 0] + x[..., 1])
    color = np.hypot(rg, by)

    def pool(m):
        return m.reshape(n, res, h // res, res, w // res).mean((2, 4)).astype(np.float32)

    return {"contrast": pool(contrast), "color": pool(color)}


def object_arrays(latents: list[dict]) -> dict:
    """Pack scene latents into arrays (objects padded to 3).

    Returns
    -------
    arrays : dict
        ``kind``, ``color`` (n, 3) int (-1 = no object), ``size``, ``x``, ``y`` (n, 3) float,
        ``place`` (n,) int.
    """
    n = len(latents)
    out = {k: np.full((n, 3), -1, np.int64) for k in ("kind", "color")}
    out.update({k: np.zeros((n, 3)) for k in ("size", "x", "y")})
    out["place"] = np.array([PLACES.index(lat["place"]) for lat in latents])
    for i, lat in enumerate(latents):
        for j, o in enumerate(lat["objects"]):
            out["kind"][i, j] = KINDS.index(o["kind"])
            out["color"][i, j] = COLOR_NAMES.index(o["color"])
            out["size"][i, j], out["x"][i, j], out["y"][i, j] = o["size"], o["x"], o["y"]
    return out


def concept_vector(latents: list[dict]) -> np.ndarray:
    """What a caption would say about each scene: place, kind and colour counts, object count.

    Returns
    -------
    concepts : ndarray of shape (n_images, 4 + 7 + 8 + 1)
    """
    rows = []
    for lat in latents:
        v = np.zeros(len(PLACES) + len(KINDS) + len(COLOR_NAMES) + 1)
        v[PLACES.index(lat["place"])] = 1
        for o in lat["objects"]:
            v[len(PLACES) + KINDS.index(o["kind"])] += 1
            v[len(PLACES) + len(KINDS) + COLOR_NAMES.index(o["color"])] += 1
        v[-1] = lat["n_objects"]
        rows.append(v)
    return np.array(rows)


def semantic_axes(seed: int, n_dims: int = 6, n_scenes: int = 10000) -> np.ndarray:
    """The shared semantic space (same for all subjects): the main axes of the world's scenes.

    The brain's semantic code is taken to be adapted to the statistics of what it sees: its
    axes are the first ``n_dims`` principal components of the (standardised) concept vectors
    of ``n_scenes`` scenes drawn from the world, so concepts that occur together (a kind and
    its typical colours) load on the same axes, as in cortical semantic maps.

    Returns
    -------
    W : ndarray of shape (n_concepts, n_dims)
        ``concept_vector(latents) @ W`` gives the scenes' coordinates (up to a constant shift).
    """
    from .scenes import sample_scenes, scene_latents

    scenes = sample_scenes(n_scenes, np.random.default_rng([seed, 7001]))
    concepts = concept_vector([scene_latents(s) for s in scenes])
    sd = concepts.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    _, _, vt = np.linalg.svd((concepts - concepts.mean(axis=0)) / sd, full_matrices=False)
    axes = vt[:n_dims].T
    # fix the SVD's arbitrary signs: the largest loading of each axis is positive
    axes *= np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(n_dims)])
    return axes / sd[:, None]


def _z(a: np.ndarray, axis: int = 0) -> np.ndarray:
    sd = a.std(axis=axis, keepdims=True)
    return (a - a.mean(axis=axis, keepdims=True)) / np.where(sd > 0, sd, 1.0)


# --------------------------------------------------------------------------- tuning + signal
@dataclass
class Tuning:
    """Ground-truth tuning of one subject's brain voxels (every array has n_voxels rows).

    Attributes
    ----------
    ijk : ndarray of shape (n_voxels, 3)
        Voxel indices of brain voxels (C order of the brain mask).
    area : ndarray of shape (n_voxels,), str
        Voxel class: V1, V2, V3, hV4, face, body, word, place, general (other nsdgeneral
        voxels) or outside (brain outside nsdgeneral).
    rf_x, rf_y, rf_sigma : ndarray of shape (n_voxels,)
        Receptive field centre (image coordinates, 0-1, y down) and size (image widths);
        NaN where the voxel has none.
    w_contrast, w_color : ndarray of shape (n_voxels,)
        Weights of contrast and colour energy (early visual voxels).
    w_kind : ndarray of shape (n_voxels, 7)
        Weights of object kinds (hV4, category and general voxels).
    w_objcolor : ndarray of shape (n_voxels, 8)
        Weights of object colours (hV4).
    w_place : ndarray of shape (n_voxels, 4)
        Weights of places (place voxels).
    w_semantic : ndarray of shape (n_voxels, n_dims)
        Loadings on the shared semantic component.
    mix : ndarray of shape (n_voxels, 2)
        Weights of the specific (area) component and the semantic component.
    snr : ndarray of shape (n_voxels,)
        Signal variance / trial-noise variance; its median over nsdgeneral is
        :func:`target_snr` (calibrated on NSD's published noise ceiling).
    noise_sd, baseline : ndarray of shape (n_voxels,)
        Trial-noise standard deviation and mean evoked response (percent signal change).
    hemi : ndarray of shape (n_voxels,)
        -1 left, +1 right hemisphere.
    global_load : ndarray of shape (n_voxels,)
        Loading on the global per-trial fluctuation (correlated noise).
    """

    ijk: np.ndarray
    area: np.ndarray
    rf_x: np.ndarray
    rf_y: np.ndarray
    rf_sigma: np.ndarray
    w_contrast: np.ndarray
    w_color: np.ndarray
    w_kind: np.ndarray
    w_objcolor: np.ndarray
    w_place: np.ndarray
    w_semantic: np.ndarray
    mix: np.ndarray
    snr: np.ndarray
    noise_sd: np.ndarray
    baseline: np.ndarray
    hemi: np.ndarray
    global_load: np.ndarray


def make_tuning(grid: BrainGrid, rois: RoiSet, rng: np.random.Generator,
                n_semantic: int = 6) -> Tuning:
    """Draw the tuning of every brain voxel of one subject.

    Parameters
    ----------
    grid : BrainGrid
    rois : RoiSet
    rng : numpy.random.Generator
        Subject-specific generator.
    n_semantic : int
        Dimensions of the shared semantic component.

    Returns
    -------
    tuning : Tuning
    """
    ijk = np.argwhere(grid.brain)
    n = len(ijk)
    idx = tuple(ijk.T)
    vr = rois.volumes["prf-visualrois"][idx]
    gen = rois.volumes["nsdgeneral"][idx] == 1
    mm = grid.mm()[idx]
    hemi = np.where(mm[:, 0] < 0, -1, 1)

    area = np.where(gen, "general", "outside").astype(object)
    for fname, cat in (("floc-places", "place"), ("floc-words", "word"),
                       ("floc-bodies", "body"), ("floc-faces", "face")):
        area[rois.volumes[fname][idx] > 0] = cat  # faces win overlaps (assigned last)
    for lab, name in ((1, "V1"), (2, "V1"), (3, "V2"), (4, "V2"), (5, "V3"), (6, "V3"),
                      (7, "hV4")):
        area[vr == lab] = name
    area = area.astype(str)

    nan = np.full(n, np.nan)
    rf_x, rf_y, rf_sigma = nan.copy(), nan.copy(), nan.copy()
    retino = np.isin(area, ["V1", "V2", "V3", "hV4"])
    e = rois.eccentricity[idx][retino]
    a = rois.polar_angle[idx][retino]
    rf_x[retino] = np.clip(0.5 + e * np.cos(a), 0.02, 0.98)
    rf_y[retino] = np.clip(0.5 - e * np.sin(a), 0.02, 0.98)  # image y points down
    s0 = np.array([RF_SIGMA0[v] for v in area[retino]])
    sl = np.array([RF_SLOPE[v] for v in area[retino]])
    rf_sigma[retino] = (s0 + sl * e) * rng.lognormal(0, 0.15, retino.sum())
    # general voxels: broad, loosely contralateral fields
    g = area == "general"
    rf_x[g] = np.clip(0.5 - 0.25 * hemi[g] + rng.normal(0, 0.15, g.sum()), 0.05, 0.95)
    rf_y[g] = np.clip(rng.normal(0.5, 0.2, g.sum()), 0.05, 0.95)
    rf_sigma[g] = rng.uniform(0.2, 0.35, g.sum())

    ev = np.isin(area, ["V1", "V2", "V3"])
    w_contrast = np.where(ev, rng.uniform(0.5, 1.0, n), 0.0)
    w_color = np.where(ev, rng.uniform(0.0, 0.8, n) * np.where(area == "V1", 0.6, 1.0), 0.0)
    w_kind = np.zeros((n, len(KINDS)))
    w_objcolor = np.zeros((n, len(COLOR_NAMES)))
    w_place = np.zeros((n, len(PLACES)))
    v4 = area == "hV4"
    w_kind[v4] = rng.normal(0, 1, (v4.sum(), len(KINDS))) + 0.5
    w_objcolor[v4] = rng.normal(0, 1, (v4.sum(), len(COLOR_NAMES))) + 0.5
    cross = {"face": {"face": 1.0, "body": 0.3}, "body": {"body": 1.0, "face": 0.3},
             "word": {"word": 1.0, "square": 0.1, "triangle": 0.05}}
    for cat, prof in cross.items():
        m = area == cat
        for kind, wgt in prof.items():
            w_kind[m, KINDS.index(kind)] = wgt * rng.uniform(0.7, 1.3, m.sum())
    p = area == "place"
    w_place[p] = rng.uniform(0.3, 0.7, (p.sum(), len(PLACES)))
    w_place[p, rng.integers(len(PLACES), size=p.sum())] = 1.0
    w_kind[g] = rng.normal(0, 0.5, (g.sum(), len(KINDS)))
    w_semantic = rng.normal(0, 1, (n, n_semantic))

    mix = np.zeros((n, 2))
    mix[:, 0] = np.where(np.isin(area, ["general", "outside"]), 0.6, 1.0)
    mix[:, 1] = np.where(ev, 0.25, np.where(area == "general", 0.8, 0.45))
    mix[area == "outside", 1] = 1.0
    snr = np.array([SNR_RELATIVE[v] for v in area]) * rng.lognormal(0, 0.45, n)
    snr[area == "outside"] = 0.0  # brain outside the visual ROIs and nsdgeneral: noise only
    snr *= target_snr() / np.median(snr[gen])  # calibration: NSD's nsdgeneral noise ceiling
    noise_sd = rng.lognormal(np.log(2.0), 0.25, n)  # percent signal change
    baseline = rng.lognormal(np.log(1.0), 0.5, n) * np.where(area == "outside", 0.2, 1.0)
    return Tuning(ijk=ijk, area=area, rf_x=rf_x, rf_y=rf_y, rf_sigma=rf_sigma,
                  w_contrast=w_contrast, w_color=w_color, w_kind=w_kind,
                  w_objcolor=w_objcolor, w_place=w_place, w_semantic=w_semantic, mix=mix,
                  snr=snr, noise_sd=noise_sd, baseline=baseline, hemi=hemi,
                  global_load=rng.uniform(0.3, 1.0, n))


def _rf_weights(rf_x, rf_y, rf_sigma, res: int) -> np.ndarray:
    """Gaussian receptive fields sampled on a res x res grid, each summing to 1: (n, res*res)."""
    c = (np.arange(res) + 0.5) / res
    gx = np.exp(-((c[None, :] - rf_x[:, None]) ** 2) / (2 * rf_sigma[:, None] ** 2))
    gy = np.exp(-((c[None, :] - rf_y[:, None]) ** 2) / (2 * rf_sigma[:, None] ** 2))
    w = (gy[:, :, None] * gx[:, None, :]).reshape(len(rf_x), -1)
    return w / w.sum(1, keepdims=True)


def simulate_signal(tuning: Tuning, features: dict, objects: dict, semantic: np.ndarray
                    ) -> np.ndarray:
    """Noise-free response of every voxel to every image, in units of signal s.d. (z-scored).

    Parameters
    ----------
    tuning : Tuning
    features : dict
        From :func:`pixel_features` (``contrast``, ``color``: (n_images, res, res)).
    objects : dict
        From :func:`object_arrays`.
    semantic : ndarray of shape (n_images, n_dims)
        Scenes in the shared semantic space (:func:`concept_vector` @ :func:`semantic_axes`).

    Returns
    -------
    signal : ndarray of shape (n_images, n_voxels), float32
        Zero mean and unit variance over images for every voxel; 0 for voxels outside
        nsdgeneral and the ROIs (they carry noise only).
    """
    n_img = semantic.shape[0]
    use = np.flatnonzero(tuning.area != "outside")  # voxels outside carry no signal
    out = np.zeros((n_img, len(tuning.area)), np.float32)
    if len(use):
        out[:, use] = _signal(tuning, use, features, objects, semantic)
    return out


def _signal(tuning: Tuning, use: np.ndarray, features: dict, objects: dict,
            semantic: np.ndarray) -> np.ndarray:
    n_img = semantic.shape[0]
    res = features["contrast"].shape[1]
    area = tuning.area[use]
    spec = np.zeros((n_img, len(use)))

    def sub(name):
        return getattr(tuning, name)[use]

    rf_x, rf_y, rf_sigma, hemi = sub("rf_x"), sub("rf_y"), sub("rf_sigma"), sub("hemi")
    ev = np.isin(area, ["V1", "V2", "V3", "general"])
    W = _rf_weights(rf_x[ev], rf_y[ev], rf_sigma[ev], res)
    con = features["contrast"].reshape(n_img, -1)
    col = features["color"].reshape(n_img, -1)
    drive = (con @ W.T) * sub("w_contrast")[ev] + (col @ W.T) * sub("w_color")[ev]
    # a compressive nonlinearity, as measured in V1-V3
    spec[:, ev] = np.sqrt(np.maximum(drive, 0))

    present = objects["kind"] >= 0
    kind = np.where(present, objects["kind"], 0)
    color = np.where(present, objects["color"], 0)
    size = objects["size"] * present
    w_kind, w_objcolor = sub("w_kind"), sub("w_objcolor")
    # hV4 and general voxels: shapes/colours of objects in the field
    for name in ("hV4", "general"):
        m = area == name
        if not m.any():
            continue
        rx, ry, rs = rf_x[m], rf_y[m], rf_sigma[m]
        d2 = (objects["x"][:, :, None] - rx) ** 2 + (objects["y"][:, :, None] - ry) ** 2
        g = np.exp(-d2 / (2 * rs**2)) * (size / 0.3)[:, :, None]  # (n_img, 3, n_m)
        wk = w_kind[m].T[kind]  # (n_img, 3, n_m)
        wc = w_objcolor[m].T[color]
        resp = (g * (wk + wc)).sum(1)
        spec[:, m] = resp if name == "hV4" else _z(spec[:, m]) + 0.8 * _z(resp)
    # category voxels: presence and size of their category, contralateral preference
    cat = np.isin(area, ["face", "body", "word"])
    if cat.any():
        wk = w_kind[cat].T[kind]  # (n_img, 3, n_cat)
        side = 1.0 / (1.0 + np.exp(-6 * (objects["x"][:, :, None] - 0.5) * -hemi[cat]))
        amount = ((size / 0.3) ** 0.7)[:, :, None] * (0.6 + 0.4 * side)
        spec[:, cat] = (wk * amount).sum(1)
    pl = area == "place"
    if pl.any():
        cover = np.clip((size**2).sum(1), 0, 1)  # fraction of the place hidden by objects
        spec[:, pl] = sub("w_place")[pl][:, objects["place"]].T * (1.2 - cover)[:, None]

    sem = semantic @ sub("w_semantic").T
    mix = sub("mix")
    sig = mix[:, 0] * _z(spec) + mix[:, 1] * _z(sem)
    return _z(sig).astype(np.float32)


def simulate_session(signal: np.ndarray, tuning: Tuning, image_index: np.ndarray,
                     rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Single-trial betas (percent signal change) of every brain voxel in one session.

    Parameters
    ----------
    signal : ndarray of shape (n_images, n_voxels)
        From :func:`simulate_signal`.
    tuning : Tuning
    image_index : ndarray of shape (n_trials,)
        Row of ``signal`` driving each trial of the session (the image shown; in a null
        world, :func:`null_signal_rows`).
    rng : numpy.random.Generator
        Generator of this subject and session (offsets, gains, noise).

    Returns
    -------
    betas : ndarray of shape (n_trials, n_voxels), float32
        ``gain * (baseline + amplitude * signal) + offset + noise + global fluctuation``,
        with amplitude ``noise_sd * sqrt(snr)``.
    session : dict
        ``gain``, ``offset`` (n_voxels,) of this session and ``global`` (n_trials,).
    """
    n_vox = signal.shape[1]
    n_trials = len(image_index)
    amp = (tuning.noise_sd * np.sqrt(tuning.snr)).astype(np.float32)
    gain = (rng.uniform(0.8, 1.25) * rng.lognormal(0, 0.1, n_vox)).astype(np.float32)
    offset = (rng.normal(0, 0.5) + rng.normal(0, 1.0, n_vox)).astype(np.float32)
    glob = rng.normal(0, 0.6, n_trials).astype(np.float32)
    betas = rng.standard_normal((n_trials, n_vox), dtype=np.float32)
    betas *= tuning.noise_sd.astype(np.float32)
    betas += gain * (tuning.baseline.astype(np.float32) + amp * signal[image_index])
    betas += offset
    betas += glob[:, None] * tuning.global_load.astype(np.float32)
    return betas, {"gain": gain, "offset": offset, "global": glob}


def null_signal_rows(image_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image whose signal drives each trial of a *null* world: a random permutation.

    A null world keeps everything of the normal world (stimuli, captions, design, voxels,
    tuning, noise, session offsets and gains, the global fluctuation) except the link between
    the image shown and the response: trial ``t`` carries the noise-free signal of the image
    shown on trial ``perm[t]``, a permutation over the whole experiment. This choice (rather
    than replacing the signal by fresh noise of the same variance) keeps every response
    statistic of the normal world exactly: each image's signal occurs as often as in the
    normal world, so the voxels' variance, their signal covariance (shared semantic
    component, neighbouring receptive fields) and the distribution of the betas are the
    same; only the mapping from stimulus to response is destroyed. The repeats of an image
    get the signals of unrelated images, so its reliability, noise ceiling and every
    stimulus-response relation are zero in expectation.

    Parameters
    ----------
    image_index : ndarray of shape (n_trials,)
        Row of the signal shown on each trial (0-based), in trial order.
    rng : numpy.random.Generator
        Generator of the permutation (its own stream: the noise draws are unchanged).

    Returns
    -------
    rows : ndarray of shape (n_trials,)
        Row of the signal that drives each trial.
    """
    image_index = np.asarray(image_index)
    return image_index[rng.permutation(len(image_index))]

