"""Brain maps: ROI slices, fsaverage5 surfaces (static and plotly), NSD's functional -> MNI map.

Surfaces are nilearn's bundled fsaverage5 meshes (no download).
"""

from __future__ import annotations

import functools

#: Default display threshold: hides vertices with no data (exact zeros).
_EPS = 1e-9

#: Views shown by :func:`plot_surface` (nilearn view names).
SURFACE_VIEWS = ("lateral", "ventral", "medial")


def _load_img(img):
    """A Nifti image from an image or a path (nilearn's ``check_niimg``)."""
    from nilearn.image import load_img

    return load_img(img)


@functools.lru_cache(maxsize=1)
def _fsaverage5():
    """nilearn's bundled fsaverage5 meshes and sulcal depth (no download; read once)."""
    from nilearn import datasets

    meshes = datasets.load_fsaverage("fsaverage5")
    sulc = datasets.load_fsaverage_data(mesh="fsaverage5", mesh_type="inflated",
                                        data_type="sulcal")
    return meshes, sulc


def volume_to_surface(volume_img, radius: float = 3.0, interpolation: str = "linear"):
    """Project an MNI-space volume onto nilearn's fsaverage5 surface (both hemispheres).

    Values are sampled between the white-matter and pial surfaces
    (:func:`nilearn.surface.vol_to_surf`). Voxels outside the volume's data, and zeros,
    give zeros.

    Parameters
    ----------
    volume_img : Nifti1Image or path
        3D map in MNI space (for real NSD, first resample the func1pt8mm map to MNI with
        NSD's own transforms, ``nsddata/ppdata/subjXX/transforms``).
    radius : float
        Sampling radius in mm.
    interpolation : {"linear", "nearest"}
        ``"nearest"`` for label maps.

    Returns
    -------
    surf_img : nilearn.surface.SurfaceImage
        Data of shape (10242,) per hemisphere, on the fsaverage5 pial mesh.
    """
    from nilearn.surface import SurfaceImage

    meshes, _ = _fsaverage5()
    return SurfaceImage.from_volume(
        mesh=meshes["pial"], volume_img=_load_img(volume_img),
        inner_mesh=meshes["white_matter"], radius=radius, interpolation=interpolation,
    )


def _inflated(surf_img):
    """The same data on the inflated fsaverage5 mesh (for display)."""
    from nilearn.surface import SurfaceImage

    meshes, _ = _fsaverage5()
    return SurfaceImage(mesh=meshes["inflated"], data=surf_img.data)


def plot_roi_slices(img_or_labels, bg_img=None, title: str | None = None,
                    display_mode: str = "ortho", cut_coords=None, cmap="tab20", **kwargs):
    """Draw an ROI label volume (or any integer label map) over an anatomical background.

    Parameters
    ----------
    img_or_labels : Nifti1Image or path
        3D integer label volume (0 = unlabeled; negative values, NSD's "outside brain",
        are shown as unlabeled).
    bg_img : Nifti1Image, path or None
        Background; ``None`` uses nilearn's bundled MNI152 template.
    title : str or None
        Figure title.
    display_mode, cut_coords : see :func:`nilearn.plotting.plot_roi`.
    cmap : str or colormap
        Colours of the labels.
    **kwargs
        Passed to :func:`nilearn.plotting.plot_roi`.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    import nibabel as nib
    import numpy as np
    from nilearn import plotting

    img = _load_img(img_or_labels)
    data = np.asarray(img.dataobj)
    labels = nib.Nifti1Image(np.where(data > 0, data, 0).astype(np.int32), img.affine)
    fig = plt.figure(figsize=(9, 3.2))
    kw = {} if bg_img is None else {"bg_img": _load_img(bg_img)}
    plotting.plot_roi(labels, figure=fig, title=title, display_mode=display_mode,
                      cut_coords=cut_coords, cmap=cmap, draw_cross=False, **kw, **kwargs)
    return fig


# size: 9 parameters, the map plus nilearn's display options (plot_surf_stat_map: cmap, vmin,
# vmax, threshold, views, hemis) and the projection radius; all keywords with defaults
def plot_surface(volume_img, title: str | None = None, cmap: str = "inferno",
                 vmin: float | None = None, vmax: float | None = None,
                 threshold: float | None = None, views=SURFACE_VIEWS,
                 hemis=("left", "right"), radius: float = 3.0):
    """Static brain-surface map: the volume projected to fsaverage5, several views.

    Parameters
    ----------
    volume_img : Nifti1Image or path
        3D map in MNI space (see :func:`volume_to_surface`).
    title : str or None
        Figure title.
    cmap : str
        Colormap.
    vmin, vmax : float or None
        Colour range; ``None`` takes 0 and the 99th percentile of the projected values.
    threshold : float or None
        Values with absolute value below it are not drawn (the sulcal background shows);
        ``None`` hides only exact zeros (vertices outside the data).
    views : sequence of str
        nilearn view names, one column each ("lateral", "medial", "ventral", "dorsal",
        "anterior", "posterior").
    hemis : sequence of {"left", "right"}
        One row each.
    radius : float
        Sampling radius of the projection, in mm.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from nilearn import plotting

    surf, sulc, vmin, vmax, threshold = _surface_inputs(volume_img, radius, vmin, vmax,
                                                       threshold)
    fig, axes = plt.subplots(len(hemis), len(views), subplot_kw={"projection": "3d"},
                             figsize=(3.0 * len(views), 2.6 * len(hemis)), squeeze=False)
    for i, hemi in enumerate(hemis):
        for j, view in enumerate(views):
            plotting.plot_surf_stat_map(
                stat_map=surf, bg_map=sulc, hemi=hemi, view=view, cmap=cmap,
                threshold=threshold, vmin=vmin, vmax=vmax, colorbar=False,
                axes=axes[i, j], figure=fig,
            )
            axes[i, j].set_title(f"{hemi} {view}", fontsize=9)
    mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(vmin, vmax))
    fig.colorbar(mappable, ax=axes, shrink=0.6, fraction=0.03)
    if title:
        fig.suptitle(title)
    return fig


def _surface_inputs(volume_img, radius, vmin, vmax, threshold):
    """Inflated surface map, sulcal background, colour range and display threshold."""
    surf = _inflated(volume_to_surface(volume_img, radius=radius))
    _, sulc = _fsaverage5()
    vmin, vmax = _color_range(surf, vmin, vmax)
    threshold = _EPS if threshold is None else threshold
    return surf, sulc, vmin, vmax, threshold


def _color_range(surf, vmin, vmax):
    """Default colour range of a surface map: [0, 99th percentile of non-zero values]."""
    import numpy as np

    values = np.concatenate([np.asarray(v).ravel() for v in surf.data.parts.values()])
    values = values[np.isfinite(values) & (values != 0)]
    if vmin is None:
        vmin = float(min(0.0, np.percentile(values, 1))) if values.size else 0.0
    if vmax is None:
        vmax = float(np.percentile(values, 99)) if values.size else 1.0
    if vmax <= vmin:
        vmax = vmin + 1e-6
    return vmin, vmax


# size: 9 parameters, plot_surface's options with one hemisphere and view (nilearn's plotly
# engine draws one)
def surface_plotly(volume_img, title: str | None = None, cmap: str = "inferno",
                   vmin: float | None = None, vmax: float | None = None,
                   threshold: float | None = None, hemi: str = "left", view: str = "ventral",
                   radius: float = 3.0):
    """Interactive brain-surface map (plotly): the volume projected to fsaverage5.

    Display it with :func:`show_plotly`.

    Parameters
    ----------
    volume_img : Nifti1Image or path
        3D map in MNI space (see :func:`volume_to_surface`).
    title : str or None
        Figure title.
    cmap, vmin, vmax, threshold, radius
        As in :func:`plot_surface`.
    hemi : {"left", "right", "both"}
        Hemisphere(s) drawn.
    view : str
        Initial camera view.

    Returns
    -------
    fig : plotly.graph_objects.Figure
        Holds one ``mesh3d`` trace.
    """
    from nilearn import plotting

    surf, sulc, vmin, vmax, threshold = _surface_inputs(volume_img, radius, vmin, vmax,
                                                       threshold)
    sfig = plotting.plot_surf_stat_map(
        stat_map=surf, bg_map=sulc, hemi=hemi, view=view, cmap=cmap, threshold=threshold,
        vmin=vmin, vmax=vmax, engine="plotly", title=title, colorbar=True,
    )
    return sfig.figure


def nsd_func_to_mni(volume_img, transform, order: int = 1):
    """Resample a map from an NSD subject's functional space to MNI with NSD's own transform.

    NSD ships, per subject, ``nsddata/ppdata/subjXX/transforms/func1pt8-to-MNI.nii.gz``: a
    volume on the MNI grid whose three frames hold, for each MNI voxel, the (1-based,
    fractional) func1pt8mm voxel coordinates it comes from (as used by NSD's
    ``nsd_mapdata``). Values are interpolated at those coordinates.

    Parameters
    ----------
    volume_img : Nifti1Image or path
        3D map on the subject's func1pt8mm grid (``PreparedSubject.to_volume``).
    transform : Nifti1Image or path
        The ``func1pt8-to-MNI`` transform volume, shape (X, Y, Z, 3).
    order : int
        Spline order: 1 (linear) for continuous maps, 0 (nearest) for labels.

    Returns
    -------
    img : Nifti1Image
        The map on the MNI grid of ``transform`` (0 outside the functional volume).
    """
    import nibabel as nib
    import numpy as np
    from scipy.ndimage import map_coordinates

    src = _load_img(volume_img)
    tr = _load_img(transform)
    coords = np.asarray(tr.dataobj, dtype=np.float64)
    if coords.ndim != 4 or coords.shape[3] != 3:
        raise ValueError(f"transform should have shape (X, Y, Z, 3), got {coords.shape}.")
    data = np.asarray(src.dataobj, dtype=np.float64)
    valid = np.all(np.isfinite(coords), axis=3) & np.all(coords > 0, axis=3) & np.all(
        coords - 1 <= np.array(data.shape[:3]) - 1, axis=3)
    pts = (coords[valid] - 1.0).T  # 0-based
    out = np.zeros(coords.shape[:3], dtype=np.float32)
    out[valid] = map_coordinates(np.nan_to_num(data), pts, order=order, mode="nearest")
    return nib.Nifti1Image(out, tr.affine)
