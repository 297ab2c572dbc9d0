"""COCO-style captions for toy scenes.

Each scene gets several captions built from varied templates and paraphrases. They mention
colours, shapes, counts, spatial relations ("above", "next to", "left of") and the place.
Objects and colours are named with a basic word or, less often, one of its synonyms or shades
("ball", "crimson"), Zipf-distributed as words are in real captions. Category objects are
named with words a reader of a decoded caption can map back to cortex: "face"/"smiley face",
"person"/"stick figure", "word"/"letters"/"sign". :func:`category_lexicon` lists, for each
category ROI, every word the captions use for its category (written to ``truth/lexicon.json`` by
the build and read by notebook 06).

Examples
--------
>>> import numpy as np
>>> from lib.toyworld.scenes import Scene, SceneObject
>>> scene = Scene("grass", (SceneObject("circle", "red", 0.3, 0.5, 0.2),
...                         SceneObject("square", "blue", 0.3, 0.5, 0.7)))
>>> caps = caption_scene(scene, np.random.default_rng(0))
>>> len(caps)
5
"""

from __future__ import annotations

import numpy as np

from .scenes import Scene, SceneObject

#: Nouns for each kind (first = canonical and most frequent, see :func:`_zipf_choice`). Every
#: kind has as many, so no kind's canonical noun is favoured by having fewer rivals.
NOUNS = {
    "circle": ("circle", "ball", "disc", "round shape", "dot", "ring", "orb", "sphere"),
    "square": ("square", "box", "block", "square shape", "cube", "tile", "crate", "rectangle"),
    "triangle": ("triangle", "triangle shape", "triangular shape", "wedge", "pyramid", "cone",
                 "arrowhead", "pointed shape"),
    "star": ("star", "star shape", "pointed star", "starfish", "sparkle", "asterisk",
             "starburst", "twinkle"),
    "face": ("smiley face", "face", "happy face", "smiling face", "smiley", "emoji",
             "grinning face", "cartoon face"),
    "body": ("stick figure", "person", "little person", "figure of a person", "man", "human",
             "child", "kid"),
    "word": ("word", "sign", "sign with letters", "written word", "label", "text", "letters",
             "banner"),
}
#: Words for each colour: the basic term first, then shades (as "crimson" for red).
COLOR_WORDS = {
    "red": ("red", "crimson", "scarlet", "ruby", "cherry", "maroon", "vermilion", "brick red"),
    "green": ("green", "emerald", "lime", "olive", "jade", "mint", "forest green", "leafy green"),
    "blue": ("blue", "navy", "azure", "cobalt", "sapphire", "cyan", "royal blue", "indigo"),
    "yellow": ("yellow", "golden", "lemon", "mustard", "gold", "canary", "sunny yellow",
               "butter yellow"),
    "purple": ("purple", "violet", "lavender", "lilac", "plum", "magenta", "mauve", "grape"),
    "orange": ("orange", "tangerine", "amber", "apricot", "peach", "copper", "rust", "pumpkin"),
    "white": ("white", "ivory", "snowy", "cream", "pearl", "milky", "chalk white", "off white"),
    "black": ("black", "ebony", "jet black", "charcoal", "onyx", "dark", "pitch black", "inky"),
}
#: Exponent of the Zipf law over synonyms (weights 1, 2**-a, 3**-a, ...).
ZIPF_EXPONENT = 1.5
#: Plural nouns (canonical) for counts.
PLURALS = {
    "circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
    "face": "faces", "body": "people", "word": "words",
}
#: Phrases for where the scene is (the place).
PLACE_PHRASES = {
    "sky": ("in the sky", "against a blue sky", "in the blue sky", "up in the sky"),
    "grass": ("on the grass", "in a green field", "on a grassy field", "on the grass outside"),
    "water": ("on the water", "over a lake", "on the lake", "above the blue water"),
    "room": ("in a room", "inside a room", "in an empty room", "indoors in a room"),
}
PLACE_NOUNS = {
    "sky": ("the sky", "a blue sky", "a cloudy sky"),
    "grass": ("a green field", "the grass", "a grassy field"),
    "water": ("a lake", "the water", "blue water"),
    "room": ("a room", "an empty room", "a room with a window"),
}
_NUMBERS = {1: "one", 2: "two", 3: "three"}
#: The words of :data:`PLACE_PHRASES` and :data:`PLACE_NOUNS` that name each place (every
#: phrase holds one of its own place's words and none of another's; tested).
PLACE_WORDS = {
    "sky": ("sky",),
    "grass": ("grass", "grassy", "field"),
    "water": ("water", "lake"),
    "room": ("room", "indoors"),
}
#: Category ROI (NSD's floc files) -> the object kinds it prefers (lib.toyworld.brain); the
#: places ROI prefers the place itself.
ROI_KINDS = {"faces": ("face",), "bodies": ("body",), "words": ("word",)}


def category_lexicon() -> dict[str, list[str]]:
    """Every word or phrase the captions use for the preferred category of each category ROI.

    Returns
    -------
    lexicon : dict
        ROI name (``"faces"``, ``"bodies"``, ``"words"``, ``"places"``) -> sorted lower-case
        words and phrases: the nouns of the ROI's object kinds (:data:`NOUNS`) with their
        plurals (:data:`PLURALS`); for places, :data:`PLACE_WORDS` of every place.
    """
    lex = {roi: sorted({w for k in kinds for w in NOUNS[k] + (PLURALS[k],)})
           for roi, kinds in ROI_KINDS.items()}
    lex["places"] = sorted({w for words in PLACE_WORDS.values() for w in words})
    return lex


def write_lexicon(path) -> None:
    """Write :func:`category_lexicon` as JSON (the format of :mod:`lib.decoding.roi_captions`)."""
    from lib.io import write_json

    write_json(path, {"source": "toy world ground truth: the words its captions use for each "
                                "category (lib.toyworld.captions.category_lexicon)",
                      "vocabulary": category_lexicon(), "missing": {}})


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _zipf_choice(words: tuple, rng: np.random.Generator) -> str:
    """One of ``words``, the k-th with weight ``k ** -ZIPF_EXPONENT``.

    As in COCO, where "man" is far more common than "guy", the basic word dominates and the
    synonyms form a long tail: a language model trained on much text learns what the rare
    words mean, a regression fitted on the captions of a thousand images sees each of them
    only a few times.
    """
    weights = 1.0 / np.arange(1, len(words) + 1) ** ZIPF_EXPONENT
    return words[int(rng.choice(len(words), p=weights / weights.sum()))]


def _noun(kind: str, rng: np.random.Generator) -> str:
    """A noun for an object kind (:data:`NOUNS`, Zipf-distributed)."""
    return _zipf_choice(NOUNS[kind], rng)


def _color(color: str, rng: np.random.Generator) -> str:
    """A word for a colour (:data:`COLOR_WORDS`, Zipf-distributed)."""
    return _zipf_choice(COLOR_WORDS[color], rng)


def _np(obj: SceneObject, rng: np.random.Generator, with_color: bool = True) -> str:
    """Noun phrase of an object, e.g. 'a red ball' or 'a blue sign that says AB'."""
    noun = _noun(obj.kind, rng)
    color = _color(obj.color, rng)
    if obj.kind == "word" and noun in ("word", "sign") and rng.random() < 0.5:
        return f"the {color} {noun} {obj.text}" if with_color else f"the {noun} {obj.text}"
    return _article(f"{color} {noun}" if with_color else noun)


def _relation(a: SceneObject, b: SceneObject, rng: np.random.Generator) -> str:
    """Spatial relation of ``a`` to ``b`` (image coordinates, y down)."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dy) > abs(dx):
        return "above" if dy < 0 else ("below" if rng.random() < 0.6 else "under")
    if rng.random() < 0.35:
        return "next to" if rng.random() < 0.5 else "beside"
    return "to the left of" if dx < 0 else "to the right of"


def _where(obj: SceneObject) -> str:
    """Coarse location of an object in the image."""
    v = "top" if obj.y < 0.36 else ("bottom" if obj.y > 0.64 else "")
    h = "left" if obj.x < 0.36 else ("right" if obj.x > 0.64 else "")
    if not v and not h:
        return "in the middle of the picture"
    if not v:
        return f"on the {h} side of the picture"
    return f"in the {(v + ' ' + h).strip()} of the picture"


def _count_phrase(scene: Scene, rng: np.random.Generator) -> str:
    """E.g. 'two shapes', 'three objects', 'two red stars', 'a face and a circle'."""
    objs = scene.objects
    n = len(objs)
    kinds = {o.kind for o in objs}
    colors = {o.color for o in objs}
    if len(kinds) == 1 and n > 1:
        kind = objs[0].kind
        color = (_color(objs[0].color, rng) + " ") if len(colors) == 1 else ""
        return f"{_NUMBERS[n]} {color}{PLURALS[kind]}"
    group = ("shapes", "objects", "things")[int(rng.integers(3))]
    if n == 1:
        return _np(objs[0], rng)
    return f"{_NUMBERS[n]} {group}"


def _list(scene: Scene, rng: np.random.Generator) -> str:
    parts = [_np(o, rng) for o in scene.objects]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _one_caption(scene: Scene, rng: np.random.Generator) -> str:
    objs = scene.objects
    place = PLACE_PHRASES[scene.place][int(rng.integers(len(PLACE_PHRASES[scene.place])))]
    place_noun = PLACE_NOUNS[scene.place][int(rng.integers(len(PLACE_NOUNS[scene.place])))]
    order = rng.permutation(len(objs))
    a = objs[order[0]]
    b = objs[order[1]] if len(objs) > 1 else None
    templates = [
        lambda: f"{_list(scene, rng)} {place}",
        lambda: f"there is {_list(scene, rng)} {place}",
        lambda: f"a picture of {_list(scene, rng)} {place}",
        lambda: f"{_count_phrase(scene, rng)} {place}",
        lambda: f"{place_noun} with {_list(scene, rng)}",
        lambda: f"{_np(a, rng)} {_where(a)}, {place}",
    ]
    if b is not None:
        templates += [
            lambda: f"{_np(a, rng)} {_relation(a, b, rng)} {_np(b, rng)} {place}",
            lambda: f"{_np(a, rng)} {_relation(a, b, rng)} {_np(b, rng)}",
            lambda: f"{_count_phrase(scene, rng)} {place}, {_np(a, rng)} {_relation(a, b, rng)} "
            f"{_np(b, rng, with_color=False)}",
        ]
    else:
        templates += [
            lambda: f"a single {_color(a.color, rng)} {NOUNS[a.kind][0]} {place}",
            lambda: f"{_np(a, rng)} alone {place}",
        ]
    text = templates[int(rng.integers(len(templates)))]()
    return _cap(text) + "."


def caption_scene(scene: Scene, rng: np.random.Generator, n: int = 5) -> list[str]:
    """Write ``n`` different COCO-style captions for a scene.

    Parameters
    ----------
    scene : Scene
        The scene to describe.
    rng : numpy.random.Generator
        Source of randomness (template and paraphrase choice); same state, same captions.
    n : int
        Number of captions (COCO has 5 per image).

    Returns
    -------
    captions : list of str
        ``n`` captions, distinct where the templates allow it, each a sentence ending in ".";
        one of them (at a random position) names every object with its colour.
    """
    # one caption always names every object with its colour, so the set describes the scene
    place = PLACE_PHRASES[scene.place][int(rng.integers(len(PLACE_PHRASES[scene.place])))]
    captions: list[str] = [_cap(f"{_list(scene, rng)} {place}") + "."]
    for _ in range(20 * n):
        cap = _one_caption(scene, rng)
        if cap not in captions:
            captions.append(cap)
        if len(captions) == n:
            break
    while len(captions) < n:  # a very plain scene: allow repeats rather than fail
        captions.append(_one_caption(scene, rng))
    captions = captions[:n]
    return [captions[i] for i in rng.permutation(len(captions))]
