"""A simulated visual cortex: voxel tuning and responses.

The anatomy (the MNI 4 mm grid, the ROIs and the retinotopy of early visual cortex) is drawn by
:mod:`lib.toyworld.anatomy`; this module gives every voxel of it a tuning and a response.

Voxel responses (percent signal change) follow the logic of visual cortex:

- V1-V3: a Gaussian receptive field over local luminance contrast and colour energy
  computed from the pixels; the field grows from V1 to V3 and with eccentricity;
- hV4: a larger receptive field over the shapes and colours of the objects in it;
- faces / bodies / words: the presence and size of their category (some cross-talk,
  a preference for the contralateral hemifield); places: the place, more so when
  less of it is hidden by objects;
- a shared semantic component: what is in the scene, as a caption would say it, on the main
  axes of the world's scene statistics
  (:func:`lib.toyworld.stimulus_features.semantic_axes`);
- trial noise, a global per-trial fluctuation, and session-specific offsets and gains; the
  noise level is calibrated once on NSD's published noise ceiling of nsdgeneral
  (:data:`NSD_NOISE_CEILING`, :func:`target_snr`).

A *null world* keeps all of this but drives each trial with the signal of another, random
trial's image (:func:`null_signal_rows`).

Everything is drawn from explicit generators, so a seed gives the same brain bit for bit.

Size: a little over the ~400-line aim (about 420), 45 of them the calibration constants with
their sources (:data:`NSD_NOISE_CEILING`, :data:`SNR_RELATIVE`); the tuning and the signal
read the same voxel classes and stay together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import BrainGrid, RoiSet
from .scenes import COLOR_NAMES, KINDS, PLACES

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
    gen = rois.volumes["nsdgeneral"][idx] == 1
    hemi = np.where(grid.mm()[idx][:, 0] < 0, -1, 1)
    area = _voxel_areas(rois, idx, gen)
    rf_x, rf_y, rf_sigma = _receptive_fields(area, rois, idx, hemi, rng)
    weights = _feature_weights(area, n_semantic, rng)

    ev = np.isin(area, ["V1", "V2", "V3"])
    mix = np.zeros((n, 2))
    mix[:, 0] = np.where(np.isin(area, ["general", "outside"]), 0.6, 1.0)
    mix[:, 1] = np.where(ev, 0.25, np.where(area == "general", 0.8, 0.45))
    mix[area == "outside", 1] = 1.0
    snr = np.array([SNR_RELATIVE[v] for v in area]) * rng.lognormal(0, 0.45, n)
    snr[area == "outside"] = 0.0  # brain outside the visual ROIs and nsdgeneral: noise only
    snr *= target_snr() / np.median(snr[gen])  # calibration: NSD's nsdgeneral noise ceiling
    noise_sd = rng.lognormal(np.log(2.0), 0.25, n)  # percent signal change
    baseline = rng.lognormal(np.log(1.0), 0.5, n) * np.where(area == "outside", 0.2, 1.0)
    return Tuning(ijk=ijk, area=area, rf_x=rf_x, rf_y=rf_y, rf_sigma=rf_sigma, **weights,
                  mix=mix, snr=snr, noise_sd=noise_sd, baseline=baseline, hemi=hemi,
                  global_load=rng.uniform(0.3, 1.0, n))


def _voxel_areas(rois: RoiSet, idx: tuple, gen: np.ndarray) -> np.ndarray:
    """Area of every voxel at ``idx``, str (n,): V1-V3 and hV4, then face (which wins overlaps),
    body, word, place, else ``general`` (in nsdgeneral ``gen``) or ``outside``."""
    vr = rois.volumes["prf-visualrois"][idx]
    area = np.where(gen, "general", "outside").astype(object)
    for fname, cat in (("floc-places", "place"), ("floc-words", "word"),
                       ("floc-bodies", "body"), ("floc-faces", "face")):
        area[rois.volumes[fname][idx] > 0] = cat  # faces win overlaps (assigned last)
    for lab, name in ((1, "V1"), (2, "V1"), (3, "V2"), (4, "V2"), (5, "V3"), (6, "V3"),
                      (7, "hV4")):
        area[vr == lab] = name
    return area.astype(str)


def _receptive_fields(area: np.ndarray, rois: RoiSet, idx: tuple, hemi: np.ndarray,
                      rng: np.random.Generator) -> tuple:
    """Receptive-field centres and sizes (n,) each, image units (NaN where a voxel has none):
    from the retinotopy in V1-V3 and hV4, broad and loosely contralateral in ``general``."""
    nan = np.full(len(area), np.nan)
    rf_x, rf_y, rf_sigma = nan.copy(), nan.copy(), nan.copy()
    retino = np.isin(area, ["V1", "V2", "V3", "hV4"])
    e = rois.eccentricity[idx][retino]
    a = rois.polar_angle[idx][retino]
    rf_x[retino] = np.clip(0.5 + e * np.cos(a), 0.02, 0.98)
    rf_y[retino] = np.clip(0.5 - e * np.sin(a), 0.02, 0.98)  # image y points down
    s0 = np.array([RF_SIGMA0[v] for v in area[retino]])
    sl = np.array([RF_SLOPE[v] for v in area[retino]])
    rf_sigma[retino] = (s0 + sl * e) * rng.lognormal(0, 0.15, retino.sum())
    g = area == "general"
    rf_x[g] = np.clip(0.5 - 0.25 * hemi[g] + rng.normal(0, 0.15, g.sum()), 0.05, 0.95)
    rf_y[g] = np.clip(rng.normal(0.5, 0.2, g.sum()), 0.05, 0.95)
    rf_sigma[g] = rng.uniform(0.2, 0.35, g.sum())
    return rf_x, rf_y, rf_sigma


def _feature_weights(area: np.ndarray, n_semantic: int, rng: np.random.Generator) -> dict:
    """What each voxel weighs, by area: pixel contrast and colour (V1-V3), object kinds and
    colours (hV4, general, and the categories with their cross-talk), places, and the shared
    semantic axes; the :class:`Tuning` fields ``w_*``."""
    n = len(area)
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
    g = area == "general"
    w_kind[g] = rng.normal(0, 0.5, (g.sum(), len(KINDS)))
    return {"w_contrast": w_contrast, "w_color": w_color, "w_kind": w_kind,
            "w_objcolor": w_objcolor, "w_place": w_place,
            "w_semantic": rng.normal(0, 1, (n, n_semantic))}


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
        From :func:`lib.toyworld.stimulus_features.pixel_features` (``contrast``, ``color``:
        (n_images, res, res)).
    objects : dict
        From :func:`lib.toyworld.stimulus_features.object_arrays`.
    semantic : ndarray of shape (n_images, n_dims)
        Scenes in the shared semantic space (``concept_vector @ semantic_axes``
        of :mod:`lib.toyworld.stimulus_features`).

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

