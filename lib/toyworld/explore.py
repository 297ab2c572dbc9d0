"""Look inside a built toy world: its files, its ground truth, its voxels (notebook 00).

Everything is read from the files a build wrote (``<root>/nsd`` in NSD's layout and
``<root>/truth``), the way a user would read real NSD, so what the notebook shows is what
the later stages get.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .scenes import KINDS, PLACES

if TYPE_CHECKING:
    import pandas

#: Display groups for an overview label map: (name, ROI file, labels).
OVERVIEW_GROUPS = (
    ("V1", "prf-visualrois", (1, 2)),
    ("V2", "prf-visualrois", (3, 4)),
    ("V3", "prf-visualrois", (5, 6)),
    ("hV4", "prf-visualrois", (7,)),
    ("faces", "floc-faces", (1, 2, 3, 4, 5)),
    ("bodies", "floc-bodies", (1, 2, 3, 4)),
    ("places", "floc-places", (1, 2, 3)),
    ("words", "floc-words", (1, 2, 3, 4, 5)),
)


def _layout(root):
    from lib.nsd.layout import NSDLayout

    return NSDLayout(Path(root) / "nsd")


def load_scenes(root) -> list[dict]:
    """Ground-truth latents and captions of every stimulus, indexed by 0-based nsd id."""
    return json.loads((Path(root) / "truth" / "scenes.json").read_text())


def world_summary(root) -> pandas.DataFrame:
    """One row per subject: images, shared images, sessions, trials, voxels per ROI group."""
    import nibabel as nib
    import pandas as pd
    from scipy.io import loadmat

    lay = _layout(root)
    mat = loadmat(lay.expdesign)
    rows = []
    for k in range(mat["subjectim"].shape[0]):
        subj = k + 1
        gen = np.asarray(nib.load(lay.roi(subj, "nsdgeneral")).dataobj)
        row = {"subject": subj, "images": mat["subjectim"].shape[1],
               "shared (test) images": mat["sharedix"].size,
               "sessions": len(lay.sessions_present(subj)),
               "trials": int(mat["stimpattern"].sum()),
               "grid": "x".join(map(str, gen.shape)), "nsdgeneral voxels": int((gen == 1).sum())}
        for name, fname, labels in OVERVIEW_GROUPS:
            vol = np.asarray(nib.load(lay.roi(subj, fname)).dataobj)
            row[name] = int(np.isin(vol, labels).sum())
        rows.append(row)
    return pd.DataFrame(rows).set_index("subject")


def stimuli(root, nsd_ids) -> np.ndarray:
    """Images (n, H, W, 3) uint8 read from ``imgBrick`` one by one (never the whole brick)."""
    import h5py

    with h5py.File(_layout(root).stimuli, "r") as f:
        return np.stack([f["imgBrick"][int(i)] for i in nsd_ids])


def captions(root, nsd_ids) -> list[list[str]]:
    """COCO captions of stimuli, through ``cocoId`` in the stimulus table (as for NSD)."""
    import pandas as pd

    from lib.nsd.design import load_coco_captions

    lay = _layout(root)
    info = pd.read_csv(lay.stim_info).set_index("nsdId")
    by_coco = load_coco_captions(lay.annotations)
    return [by_coco[int(info.loc[int(i), "cocoId"])] for i in nsd_ids]


def roi_overview(root, subject: int = 1):
    """One label volume with the groups of :data:`OVERVIEW_GROUPS` (1..8), as Nifti1Image.

    Returns
    -------
    img : Nifti1Image
    names : dict of int -> str
    """
    import nibabel as nib

    lay = _layout(root)
    ref = nib.load(lay.roi(subject, "nsdgeneral"))
    out = np.zeros(ref.shape, np.int16)
    for value, (_, fname, labels) in enumerate(OVERVIEW_GROUPS, start=1):
        vol = np.asarray(nib.load(lay.roi(subject, fname)).dataobj)
        out[np.isin(vol, labels) & (out == 0)] = value
    names = {v: g[0] for v, g in enumerate(OVERVIEW_GROUPS, start=1)}
    return nib.Nifti1Image(out, ref.affine), names


def roi_surface_figure(label_img, names: dict, title: str | None = None):
    """ROI labels on nilearn's fsaverage5 inflated surface (both hemispheres, three views).

    Each vertex takes the most frequent label sampled between white and pial surfaces.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from nilearn import datasets, plotting, surface

    meshes = datasets.load_fsaverage("fsaverage5")
    sulc = datasets.load_fsaverage_data(mesh="fsaverage5", mesh_type="inflated",
                                        data_type="sulcal")
    labels = surface.SurfaceImage.from_volume(mesh=meshes["pial"], volume_img=label_img,
                                              inner_mesh=meshes["white_matter"],
                                              interpolation="nearest_most_frequent",
                                              radius=3.0)
    data = {h: np.round(np.asarray(v)).astype(int) for h, v in labels.data.parts.items()}
    labels = surface.SurfaceImage(mesh=meshes["inflated"], data=data)
    n = max(names)
    cmap = ListedColormap(plt.cm.tab10(np.arange(n) % 10))
    fig, axes = plt.subplots(2, 3, subplot_kw={"projection": "3d"}, figsize=(11, 6))
    for i, hemi in enumerate(("left", "right")):
        for j, view in enumerate(("medial", "ventral", "lateral")):
            plotting.plot_surf_roi(roi_map=labels, bg_map=sulc, hemi=hemi, view=view,
                                   cmap=cmap, vmin=0.5, vmax=n + 0.5, threshold=0.5,
                                   axes=axes[i, j],
                                   figure=fig, colorbar=False)
            axes[i, j].set_title(f"{hemi} {view}", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(v - 1)) for v in sorted(names)]
    fig.legend(handles, [names[v] for v in sorted(names)], loc="center right", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def repeat_averaged(root, subject: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
    """Responses of masked voxels, z-scored per session (training trials' statistics).

    Parameters
    ----------
    root : path-like
        World root.
    subject : int
    mask : ndarray of shape (X, Y, Z), bool
        Voxels to read.

    Returns
    -------
    repeats : ndarray of shape (n_images, n_repeats, n_voxels), float32
        Rows in the subject's ``subjectim`` order.
    nsd_ids : ndarray of shape (n_images,)
        0-based nsd id of each row.
    is_test : ndarray of shape (n_images,), bool
        Shared (test) images.
    """
    from scipy.io import loadmat

    from lib.nsd.volumes import read_masked_volumes

    lay = _layout(root)
    mat = loadmat(lay.expdesign)
    mo = mat["masterordering"].ravel().astype(int)
    n_shared = mat["sharedix"].size
    counts = mat["stimpattern"].reshape(mat["stimpattern"].shape[0], -1).sum(1).astype(int)
    rows, start = [], 0
    for s, n in enumerate(counts, start=1):
        # lib.nsd's streaming reader (isal gzip when installed): a third of nibabel's time
        b = read_masked_volumes(lay.betas(subject, s), mask.shape, np.argwhere(mask)) / 300
        train = mo[start:start + n] > n_shared
        rows.append((b - b[train].mean(0)) / b[train].std(0))
        start += n
    z = np.concatenate(rows)
    shown = mo[: len(z)]
    n_images = mat["subjectim"].shape[1]
    n_rep = np.bincount(shown, minlength=n_images + 1)[1:].min()
    order = np.argsort(shown, kind="stable")
    reps = z[order].reshape(n_images, n_rep, -1)
    ids = mat["subjectim"][subject - 1].astype(int) - 1
    return reps, ids, np.arange(n_images) < n_shared


def roi_mask(root, subject: int, fname: str, labels=None) -> np.ndarray:
    """Boolean volume of an ROI file's labels (all positive labels when ``labels`` is None)."""
    import nibabel as nib

    vol = np.asarray(nib.load(_layout(root).roi(subject, fname)).dataobj)
    return vol > 0 if labels is None else np.isin(vol, labels)


def category_table(responses: np.ndarray, nsd_ids: np.ndarray, scenes: list[dict]
                   ) -> pandas.DataFrame:
    """Mean response (and s.e.m.) to images with vs without each object kind and per place.

    Parameters
    ----------
    responses : ndarray of shape (n_images,)
        One voxel's (or an ROI's mean) repeat-averaged response.
    nsd_ids : ndarray of shape (n_images,)
    scenes : list of dict
        From :func:`load_scenes`.
    """
    import pandas as pd

    rows = []
    for kind in KINDS:
        has = np.array([scenes[i][f"has_{kind}"] for i in nsd_ids])
        rows.append({"condition": f"with a {kind}", "mean": responses[has].mean(),
                     "sem": responses[has].std() / np.sqrt(has.sum()), "n": int(has.sum())})
    for place in PLACES:
        at = np.array([scenes[i]["place"] == place for i in nsd_ids])
        rows.append({"condition": f"place: {place}", "mean": responses[at].mean(),
                     "sem": responses[at].std() / np.sqrt(at.sum()), "n": int(at.sum())})
    return pd.DataFrame(rows).set_index("condition")


def load_tuning(root, subject: int = 1) -> dict:
    """The ground-truth tuning file of a subject (``truth/subjXX/tuning.h5``) as arrays."""
    import h5py

    with h5py.File(Path(root) / "truth" / f"subj{subject:02d}" / "tuning.h5", "r") as f:
        out = {k: f[k][()] for k in f}
    out["area"] = out["area"].astype(str)
    return out


def estimated_receptive_field(response: np.ndarray, images: np.ndarray, res: int = 16,
                              groups: np.ndarray | None = None) -> np.ndarray:
    """Reverse correlation: the response-weighted average of local contrast.

    The analogue of a spike-triggered average: with the response z-scored, the map is the
    covariance over images between the response and each location's contrast. Places have
    their own contrast layout (the floor edge of a room, the waves of a lake) and voxels
    respond to places too; ``groups`` (e.g. the place of each image) removes that confound by
    centring responses and contrast within each group.

    Parameters
    ----------
    response : ndarray of shape (n_images,)
    images : ndarray of shape (n_images, H, W, 3), uint8
    res : int
        Map resolution.
    groups : ndarray of shape (n_images,) or None
        Labels within which responses and contrast are centred.

    Returns
    -------
    rf : ndarray of shape (res, res)
        Covariance of the z-scored response with the contrast at each location.
    """
    from .stimulus_features import pixel_features

    c = pixel_features(images, res=res)["contrast"].reshape(len(images), -1)
    r = np.asarray(response, np.float64).copy()
    labels = np.zeros(len(r), int) if groups is None else np.unique(groups, return_inverse=True)[1]
    for g in np.unique(labels):
        m = labels == g
        c[m] -= c[m].mean(0)
        r[m] -= r[m].mean()
    r /= r.std()
    return (c * r[:, None]).mean(0).reshape(res, res)


def true_receptive_field(tuning: dict, voxel: int, res: int = 32) -> np.ndarray:
    """The simulated Gaussian receptive field of a tuning-file voxel on a res x res grid."""
    from .brain import _rf_weights

    w = _rf_weights(tuning["rf_x"][[voxel]], tuning["rf_y"][[voxel]],
                    tuning["rf_sigma"][[voxel]], res)
    return w.reshape(res, res)


def volume(root, subject: int, mask: np.ndarray, values: np.ndarray):
    """Nifti1Image on the subject's grid with ``values`` at the ``mask`` voxels, 0 elsewhere.

    Parameters
    ----------
    mask : ndarray of shape (X, Y, Z), bool
    values : ndarray of shape (mask.sum(),)
        In the C order of ``np.argwhere(mask)``.
    """
    import nibabel as nib

    ref = nib.load(_layout(root).roi(subject, "nsdgeneral"))
    out = np.zeros(ref.shape, np.float32)
    out[mask] = values
    return nib.Nifti1Image(out, ref.affine)


def noise_ceiling_table(root, subjects, n_average: int = 3) -> pandas.DataFrame:
    """Median noise ceiling (percent) of nsdgeneral and of each ROI group, per subject.

    Measured from the files as the analysis reads them (betas z-scored per session with the
    training trials' statistics, grouped by image), with NSD's noise-ceiling formula
    (:func:`lib.scoring.noise_ceiling`), for responses averaged over ``n_average`` trials:
    the statistic NSD publishes for nsdgeneral (:data:`lib.toyworld.brain.NSD_NOISE_CEILING`).
    ROI groups (:data:`OVERVIEW_GROUPS`) are taken inside nsdgeneral.

    Parameters
    ----------
    root : path-like
        World root.
    subjects : iterable of int
    n_average : int
        Trials averaged in the responses the ceiling refers to.

    Returns
    -------
    table : pandas.DataFrame
        Index ``nsdgeneral`` and the group names; one column per subject (``subjXX``).
    """
    import pandas as pd

    from lib.scoring import noise_ceiling

    columns = {}
    for subject in subjects:
        general = roi_mask(root, subject, "nsdgeneral", (1,))
        reps, _, _ = repeat_averaged(root, subject, general)
        nc = 100 * noise_ceiling(reps, n_average=n_average)
        col = {"nsdgeneral": float(np.nanmedian(nc))}
        for name, fname, labels in OVERVIEW_GROUPS:
            inside = roi_mask(root, subject, fname, labels)[general]
            col[name] = float(np.nanmedian(nc[inside])) if inside.any() else float("nan")
        columns[f"subj{subject:02d}"] = col
    return pd.DataFrame(columns)
