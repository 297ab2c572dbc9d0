"""Training corpora for the toy models: scenes drawn apart from the simulated experiment.

The experiment's stimuli come from the world seed's own streams; the models learn from
scenes drawn from ``numpy.random.default_rng([seed, 1000 + k])``, a separate stream, so
every stimulus the simulated subjects see is held out from every model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Offset of the models' seed streams (``default_rng([seed, MODEL_STREAM + k])``).
MODEL_STREAM = 1000


@dataclass
class Corpus:
    """Rendered scenes with captions and multi-label targets.

    Attributes
    ----------
    images : ndarray of shape (n, size, size, 3), uint8
    captions : list of list of str
        Five captions per image.
    labels : ndarray of shape (n, n_labels), float32
        Multi-hot targets from the scene latents (see :func:`scene_labels`).
    scenes : list of Scene
    """

    images: np.ndarray
    captions: list
    labels: np.ndarray
    scenes: list

    def __len__(self) -> int:
        return len(self.images)


def label_names() -> list[str]:
    """Names of the multi-label targets, in column order of :func:`scene_labels`."""
    from ..scenes import COLOR_NAMES, KINDS, PLACES

    names = [f"place={p}" for p in PLACES]
    names += [f"kind={k}" for k in KINDS]
    names += [f"color={c}" for c in COLOR_NAMES]
    names += [f"n_objects={n}" for n in (1, 2, 3)]
    names += [f"{k}+{c}" for k in KINDS for c in COLOR_NAMES]
    names += [f"{k}@{r}{c}" for k in KINDS for r in range(3) for c in range(3)]
    names += [f"{c}@{r}{cc}" for c in COLOR_NAMES for r in range(3) for cc in range(3)]
    return names


def scene_labels(scene) -> np.ndarray:
    """Multi-hot description of a scene.

    Columns: place (one-hot), object kinds present, colours present, number of objects,
    (kind, colour) pairs present, kind in each cell of a 3x3 grid, colour in each cell.

    Returns
    -------
    y : ndarray of shape (n_labels,), float32
    """
    from ..scenes import COLOR_NAMES, KINDS, PLACES

    nk, nc = len(KINDS), len(COLOR_NAMES)
    parts = {
        "place": np.zeros(len(PLACES)), "kind": np.zeros(nk), "color": np.zeros(nc),
        "n": np.zeros(3), "kc": np.zeros((nk, nc)), "kpos": np.zeros((nk, 3, 3)),
        "cpos": np.zeros((nc, 3, 3)),
    }
    parts["place"][PLACES.index(scene.place)] = 1
    parts["n"][len(scene.objects) - 1] = 1
    for o in scene.objects:
        k, c = KINDS.index(o.kind), COLOR_NAMES.index(o.color)
        r, col = min(int(o.y * 3), 2), min(int(o.x * 3), 2)
        parts["kind"][k] = parts["color"][c] = parts["kc"][k, c] = 1
        parts["kpos"][k, r, col] = parts["cpos"][c, r, col] = 1
    return np.concatenate([v.ravel() for v in parts.values()]).astype(np.float32)


def make_corpus(n: int, seed: int, stream: int, image_size: int = 64, desc: str = "") -> Corpus:
    """Sample, render and caption ``n`` scenes from the models' own seed stream.

    Parameters
    ----------
    n : int
        Number of scenes.
    seed : int
        World seed.
    stream : int
        Which model stream (0 = training, 1 = validation, ...); the generator is
        ``numpy.random.default_rng([seed, MODEL_STREAM + stream])``.
    image_size : int
        Rendered width and height in pixels.

    Returns
    -------
    corpus : Corpus
    """
    from tqdm.auto import tqdm

    from ..captions import caption_scene
    from ..scenes import render_scene, sample_scenes

    rng = np.random.default_rng([int(seed), MODEL_STREAM + int(stream)])
    scenes = sample_scenes(int(n), rng)
    images = np.stack([render_scene(s, image_size) for s in tqdm(scenes, desc=desc or "render",
                                                                  leave=False)])
    captions = [caption_scene(s, rng) for s in scenes]
    labels = np.stack([scene_labels(s) for s in scenes])
    return Corpus(images=images, captions=captions, labels=labels, scenes=scenes)


