"""What the simulated brain sees of a stimulus: pixel feature maps, the objects and the scene's
concepts on the world's semantic axes (:mod:`lib.toyworld.brain` turns them into responses).
"""

from __future__ import annotations

import numpy as np

from .scenes import COLOR_NAMES, KINDS, PLACES

#: Resolution of the pixel feature maps (contrast and colour energy).
FEATURE_RES = 32



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
