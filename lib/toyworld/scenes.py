"""Toy scenes: a place (background) with one to three objects, drawn with PIL.

A :class:`Scene` is the ground truth of one stimulus: where it is (``place``) and what is
in it (``objects``). :func:`sample_scenes` draws scenes from a seeded generator,
:func:`render_scene` turns a scene into pixels, and :func:`scene_latents` gives the
JSON-serialisable description that the simulated brain and the captions are built from.

Objects are simple shapes (circle, square, triangle, star) plus three *category* objects
that give category-selective cortex something to prefer: a ``face`` (smiley), a ``body``
(stick figure) and a ``word`` (a few letters). As in natural images, objects have typical
colours (:data:`TYPICAL_COLORS`).

Examples
--------
>>> import numpy as np
>>> scenes = sample_scenes(2, np.random.default_rng(0))
>>> render_scene(scenes[0], size=64).shape
(64, 64, 3)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Backgrounds ("places"), in label order.
PLACES = ("sky", "grass", "water", "room")
#: Plain shapes.
SHAPES = ("circle", "square", "triangle", "star")
#: Category objects (face-, body- and word-selective cortex prefer these).
CATEGORIES = ("face", "body", "word")
#: Every object kind, in label order.
KINDS = SHAPES + CATEGORIES
#: Colour names and their RGB values.
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (245, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
COLOR_NAMES = tuple(COLORS)
#: Colours not drawn on a place because they would vanish into the background.
_HIDDEN_COLORS = {"sky": ("blue", "white"), "grass": ("green",), "water": ("blue",), "room": ()}
#: Letters used for words (no look-alikes).
_LETTERS = "ABCDEFGHKMNPRSTUVXYZ"
#: Relative frequency of each kind (category objects a bit more often so their ROIs get data).
_KIND_P = np.array([1.0, 1.0, 1.0, 1.0, 1.2, 1.2, 1.2])
_KIND_P = _KIND_P / _KIND_P.sum()
#: Scene statistics, as in natural images (yellow smiley faces, black stick figures): the
#: colours typical of each kind. A typical colour is drawn ``1 + CONTEXT_BOOST`` times as often
#: as an atypical one, and every combination still occurs. The statistics give words a
#: distribution a language model can learn from: in uniformly random scenes every colour word
#: shares the same contexts. (Kinds do not prefer places: category objects tied to a place
#: would make category cortex and place cortex hard to tell apart.)
TYPICAL_COLORS = {"circle": ("red", "orange"), "square": ("purple", "white"),
                  "triangle": ("green", "black"), "star": ("yellow", "red"),
                  "face": ("yellow", "orange"), "body": ("black", "red"),
                  "word": ("black", "purple")}
CONTEXT_BOOST = 4.0


def color_probabilities(kind: str, place: str) -> dict:
    """P(colour | kind, place): colours that would vanish into the place are never drawn."""
    allowed = [c for c in COLOR_NAMES if c not in _HIDDEN_COLORS[place]]
    w = np.array([1 + CONTEXT_BOOST * (c in TYPICAL_COLORS[kind]) for c in allowed])
    return dict(zip(allowed, w / w.sum()))
#: Supersampling factor used while drawing (then box-filtered down: smooth, deterministic edges).
_SS = 4


@dataclass(frozen=True)
class SceneObject:
    """One object in a scene.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.
    color : str
        One of :data:`COLOR_NAMES`.
    size : float
        Width of the object as a fraction of the image width (about 0.15-0.45).
    x, y : float
        Centre of the object in image coordinates, 0-1, ``y`` pointing down.
    text : str
        The letters, for ``kind == "word"``; empty otherwise.
    """

    kind: str
    color: str
    size: float
    x: float
    y: float
    text: str = ""


@dataclass(frozen=True)
class Scene:
    """A stimulus: a place with one to three objects.

    Parameters
    ----------
    place : str
        One of :data:`PLACES`.
    objects : tuple of SceneObject
        One to three objects, in drawing order (later objects are drawn on top).
    """

    place: str
    objects: tuple[SceneObject, ...]


# --------------------------------------------------------------------------- sampling
def _sample_object(rng: np.random.Generator, place: str, n_objects: int, placed: list):
    kind = KINDS[rng.choice(len(KINDS), p=_KIND_P)]
    colors = color_probabilities(kind, place)
    color = list(colors)[rng.choice(len(colors), p=list(colors.values()))]
    hi = {1: 0.45, 2: 0.36, 3: 0.30}[n_objects]
    size = float(rng.uniform(0.18, hi))
    text = ""
    if kind == "word":
        n_letters = int(rng.integers(2, 5))
        text = "".join(_LETTERS[i] for i in rng.integers(len(_LETTERS), size=n_letters))
        size = max(size, 0.25)  # letters must stay legible
    # place it: inside the image, with little overlap with earlier objects
    best, best_overlap = None, np.inf
    for _ in range(30):
        half = size / 2
        x = float(rng.uniform(half, 1 - half))
        y = float(rng.uniform(half, 1 - half))
        overlap = sum(
            max(0.0, (size + o.size) / 2 * 0.9 - np.hypot(x - o.x, y - o.y)) for o in placed
        )
        if overlap < best_overlap:
            best, best_overlap = (x, y), overlap
        if overlap == 0.0:
            break
    x, y = best
    return SceneObject(kind, color, round(size, 4), round(x, 4), round(y, 4), text)


def sample_scenes(n: int, rng: np.random.Generator) -> list[Scene]:
    """Draw ``n`` random scenes.

    Parameters
    ----------
    n : int
        Number of scenes.
    rng : numpy.random.Generator
        Source of randomness; the same generator state gives the same scenes.

    Returns
    -------
    scenes : list of Scene
        Places are uniform; 1, 2 or 3 objects with probabilities 0.4, 0.35, 0.25; colours
        follow :func:`color_probabilities`.
    """
    scenes = []
    for _ in range(int(n)):
        place = PLACES[rng.integers(len(PLACES))]
        n_objects = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
        placed: list[SceneObject] = []
        for _ in range(n_objects):
            placed.append(_sample_object(rng, place, n_objects, placed))
        scenes.append(Scene(place, tuple(placed)))
    return scenes


# --------------------------------------------------------------------------- drawing
def _draw_background(draw: ImageDraw.ImageDraw, place: str, s: int) -> None:
    """Paint the place: a gradient plus a little texture (drawn at supersampled size ``s``)."""
    if place == "sky":
        for r in range(s):
            t = r / s
            draw.line([(0, r), (s, r)], fill=(int(90 + 80 * t), int(150 + 70 * t), 245))
        for cx, cy, w in ((0.22, 0.2, 0.22), (0.7, 0.12, 0.18), (0.55, 0.78, 0.16)):
            for dx in (-0.06, 0.0, 0.06):
                draw.ellipse(
                    [(cx + dx - w / 3) * s, (cy - w / 5) * s, (cx + dx + w / 3) * s,
                     (cy + w / 5) * s],
                    fill=(240, 245, 252),
                )
    elif place == "grass":
        for r in range(s):
            t = r / s
            draw.line([(0, r), (s, r)],
                      fill=(int(70 - 30 * t), int(150 + 40 * t), int(50 - 20 * t)))
        step = max(s // 16, 2)
        for i in range(0, s, step):
            for j in range(step // 2, s, 2 * step):
                off = (i * 7 + j * 3) % step
                draw.line([(i + off, j + step), (i + off + step // 3, j)],
                          fill=(40, 110, 30), width=max(s // 128, 1))
    elif place == "water":
        for r in range(s):
            t = r / s
            draw.line([(0, r), (s, r)], fill=(20, int(90 + 40 * t), int(160 + 40 * t)))
        step = max(s // 10, 2)
        for k, j in enumerate(range(step // 2, s, step)):
            pts = [(i, j + (step / 4) * np.sin(2 * np.pi * (i / s * 3 + 0.3 * k))) for i in
                   range(0, s + 1, max(s // 32, 1))]
            draw.line(pts, fill=(170, 210, 240), width=max(s // 96, 1))
    elif place == "room":
        floor = int(0.68 * s)
        for r in range(floor):
            t = r / floor
            draw.line([(0, r), (s, r)],
                      fill=(int(225 - 25 * t), int(205 - 25 * t), int(170 - 25 * t)))
        draw.rectangle([0, floor, s, s], fill=(130, 85, 50))
        plank = max(s // 8, 2)
        for i in range(0, s, plank):
            draw.line([(i, floor), (i - s // 6, s)], fill=(100, 65, 35), width=max(s // 128, 1))
        draw.rectangle([0.62 * s, 0.1 * s, 0.88 * s, 0.38 * s], fill=(170, 210, 240),
                       outline=(240, 240, 240), width=max(s // 64, 1))
    else:
        raise ValueError(f"unknown place {place!r}; expected one of {PLACES}")


def _contrast(color: str) -> tuple[int, int, int]:
    return (250, 250, 250) if color in ("black", "blue", "purple") else (15, 15, 15)


def _star(cx, cy, r_out, r_in, n=5):
    pts = []
    for k in range(2 * n):
        r = r_out if k % 2 == 0 else r_in
        a = -np.pi / 2 + k * np.pi / n
        pts.append((cx + r * np.cos(a), cy + r * np.sin(a)))
    return pts


def _draw_object(img: Image.Image, draw: ImageDraw.ImageDraw, obj: SceneObject, s: int) -> None:
    rgb = COLORS[obj.color]
    cx, cy, w = obj.x * s, obj.y * s, obj.size * s
    h = w / 2
    lw = max(int(w / 10), 1)
    if obj.kind == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=rgb)
    elif obj.kind == "square":
        q = h * 0.88
        draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=rgb)
    elif obj.kind == "triangle":
        draw.polygon([(cx, cy - h), (cx + h, cy + h * 0.8), (cx - h, cy + h * 0.8)], fill=rgb)
    elif obj.kind == "star":
        draw.polygon(_star(cx, cy, h, h * 0.45), fill=rgb)
    elif obj.kind == "face":
        ink = _contrast(obj.color)
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=rgb, outline=ink, width=max(lw // 2, 1))
        e = h * 0.14
        for ex in (-0.35, 0.35):
            draw.ellipse([cx + ex * h - e, cy - 0.3 * h - e, cx + ex * h + e, cy - 0.3 * h + e],
                         fill=ink)
        draw.arc([cx - 0.55 * h, cy - 0.4 * h, cx + 0.55 * h, cy + 0.6 * h], 20, 160, fill=ink,
                 width=lw)
    elif obj.kind == "body":
        head = h * 0.28
        neck = cy - h + 2 * head
        hip = cy + h * 0.2
        draw.ellipse([cx - head, cy - h, cx + head, neck], fill=rgb)
        draw.line([(cx, neck), (cx, hip)], fill=rgb, width=lw)
        draw.line([(cx - h * 0.6, neck + h * 0.15), (cx, neck + h * 0.35),
                   (cx + h * 0.6, neck + h * 0.15)], fill=rgb, width=lw, joint="curve")
        draw.line([(cx - h * 0.5, cy + h), (cx, hip), (cx + h * 0.5, cy + h)], fill=rgb, width=lw,
                  joint="curve")
    elif obj.kind == "word":
        font = ImageFont.load_default(size=max(int(w * 1.6 / max(len(obj.text), 1)), 4))
        x0, y0, x1, y1 = draw.textbbox((0, 0), obj.text, font=font)
        tw, th = x1 - x0, y1 - y0
        layer = Image.new("L", (tw + 2, th + 2), 0)
        ImageDraw.Draw(layer).text((1 - x0, 1 - y0), obj.text, fill=255, font=font)
        # stretch the letters to the object's box (width w, height w/2)
        tw_, th_ = max(int(w), 1), max(int(w / 2), 1)
        layer = layer.resize((tw_, th_), Image.BILINEAR)
        plate = [cx - tw_ / 2 - lw, cy - th_ / 2 - lw, cx + tw_ / 2 + lw, cy + th_ / 2 + lw]
        paper = (40, 40, 40) if obj.color in ("white", "yellow") else (235, 235, 225)
        draw.rectangle(plate, fill=paper)
        img.paste(Image.new("RGB", layer.size, rgb), (int(cx - tw_ / 2), int(cy - th_ / 2)), layer)
    else:
        raise ValueError(f"unknown object kind {obj.kind!r}; expected one of {KINDS}")


def render_scene(scene: Scene, size: int = 64) -> np.ndarray:
    """Draw a scene.

    Parameters
    ----------
    scene : Scene
        What to draw.
    size : int
        Width and height of the image in pixels.

    Returns
    -------
    image : ndarray of shape (size, size, 3), uint8
        RGB pixels. Drawn at 4x resolution and box-filtered down, so edges are smooth and the
        result is deterministic.
    """
    s = int(size) * _SS
    img = Image.new("RGB", (s, s))
    draw = ImageDraw.Draw(img)
    _draw_background(draw, scene.place, s)
    for obj in scene.objects:
        _draw_object(img, draw, obj, s)
    img = img.resize((int(size), int(size)), Image.BOX)
    return np.asarray(img, dtype=np.uint8).copy()


def scene_latents(scene: Scene) -> dict:
    """Ground-truth description of a scene, JSON-serialisable.

    Parameters
    ----------
    scene : Scene

    Returns
    -------
    latents : dict
        ``place``, ``n_objects``, ``objects`` (list of dicts with ``kind``, ``color``, ``size``,
        ``x``, ``y``, ``text``), and per-kind summaries: ``has_<kind>`` (bool) and
        ``area_<kind>`` (summed squared size of objects of that kind, a proxy of their area).
    """
    lat = {
        "place": scene.place,
        "n_objects": len(scene.objects),
        "objects": [asdict(o) for o in scene.objects],
    }
    for kind in KINDS:
        objs = [o for o in scene.objects if o.kind == kind]
        lat[f"has_{kind}"] = bool(objs)
        lat[f"area_{kind}"] = float(round(sum(o.size**2 for o in objs), 6))
    return lat
