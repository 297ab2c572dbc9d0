"""Figures for the book: interactive plotly output that works offline, brain maps, galleries."""

from __future__ import annotations


def show_plotly(fig) -> None:
    """Display a plotly figure in a notebook so that it also renders in the offline book.

    The output is a MIME bundle: JupyterLab draws the ``application/vnd.plotly.v1+json`` part;
    the built book uses the ``text/html`` part, which holds only the figure's ``<div>`` and its
    ``Plotly.newPlot`` call. plotly.js itself is loaded once per page from the book's local
    ``_static/vendor/plotly.min.js`` (see ``_config.yml``), never from a CDN.

    Parameters
    ----------
    fig : plotly.graph_objects.Figure
        The figure to show.
    """
    from IPython.display import display

    html = fig.to_html(full_html=False, include_plotlyjs=False, include_mathjax=False)
    bundle = {"application/vnd.plotly.v1+json": fig.to_plotly_json(), "text/html": html}
    display(bundle, raw=True)


# --------------------------------------------------------------------------------------
# Brain maps
# --------------------------------------------------------------------------------------

#: Default display threshold: hides vertices with no data (exact zeros).
_EPS = 1e-9

#: Views shown by :func:`plot_surface` (nilearn view names).
SURFACE_VIEWS = ("lateral", "ventral", "medial")


def _load_img(img):
    """A Nifti image from an image or a path (nilearn's ``check_niimg``)."""
    from nilearn.image import load_img

    return load_img(img)


def _fsaverage5():
    """nilearn's bundled fsaverage5 meshes and sulcal depth (no download)."""
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

    surf = _inflated(volume_to_surface(volume_img, radius=radius))
    _, sulc = _fsaverage5()
    vmin, vmax = _color_range(surf, vmin, vmax)
    threshold = _EPS if threshold is None else threshold
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

    surf = _inflated(volume_to_surface(volume_img, radius=radius))
    _, sulc = _fsaverage5()
    vmin, vmax = _color_range(surf, vmin, vmax)
    threshold = _EPS if threshold is None else threshold
    sfig = plotting.plot_surf_stat_map(
        stat_map=surf, bg_map=sulc, hemi=hemi, view=view, cmap=cmap, threshold=threshold,
        vmin=vmin, vmax=vmax, engine="plotly", title=title, colorbar=True,
    )
    return sfig.figure


def plot_gallery(images, rows_of_text, labels=None, ncols: int = 4, width: float = 3.2,
                 wrap: int = 40, title: str | None = None):
    """A grid of images, each with lines of text beneath it (e.g. reference / decoded / control).

    Parameters
    ----------
    images : ndarray of shape (n, H, W, 3), uint8, or list of such arrays
    rows_of_text : list of list of str
        For each image, the lines to print under it.
    labels : list of str or None
        Label prefixed to each line (e.g. ``["reference", "brain", "shuffled"]``); line ``j``
        of every image gets ``labels[j]`` and its own colour.
    ncols : int
        Images per row of the grid.
    width : float
        Width of one panel in inches.
    wrap : int
        Characters per text line before wrapping.
    title : str or None

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    import textwrap

    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnchoredOffsetbox, TextArea, VPacker

    n = len(images)
    if len(rows_of_text) != n:
        raise ValueError(f"{n} images but {len(rows_of_text)} rows of text")
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    wrapped = [[textwrap.fill((f"{labels[j]}: " if labels is not None else "") + str(line), wrap)
                for j, line in enumerate(rows)] for rows in rows_of_text]
    max_lines = max((sum(t.count("\n") + 1 for t in rows) for rows in wrapped), default=0)
    text_h = 0.15 * max_lines + 0.1 * len(labels or [])
    fig = plt.figure(figsize=(width * ncols, (width + text_h) * nrows))
    colors = ["#444444", "#0b6e4f", "#a23b72", "#2e86ab", "#c46d00"]
    row_h = 1.0 / nrows
    img_frac = width / (width + text_h)
    for i in range(n):
        r, c = divmod(i, ncols)
        bottom = 1.0 - (r + 1) * row_h + row_h * (1 - img_frac)
        ax = fig.add_axes([c / ncols + 0.01, bottom, 1.0 / ncols - 0.02, row_h * img_frac * 0.92])
        ax.imshow(images[i])
        ax.axis("off")
        boxes = [TextArea(t, textprops={"color": colors[j % len(colors)], "fontsize": 8})
                 for j, t in enumerate(wrapped[i])]
        packed = VPacker(children=boxes, align="left", pad=0, sep=3)
        ax.add_artist(AnchoredOffsetbox(loc="upper left", child=packed, frameon=False, pad=0,
                                        bbox_to_anchor=(0.0, -0.03),
                                        bbox_transform=ax.transAxes, borderpad=0))
    if title:
        fig.suptitle(title, y=1.0 + 0.02 / nrows)
    return fig
