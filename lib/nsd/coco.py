"""Category vocabulary of NSD's category ROIs from COCO's own category annotations.

Notebook 06 asks whether a category ROI's caption names the ROI's preferred category more
often than captions of random regions do. The words it counts come from a vocabulary file
(format in :mod:`lib.decoding.roi_captions`); for real NSD, :func:`coco_lexicon` builds it from
the category annotations of the COCO images NSD shows:

- ``annotations/instances_{val,train}2017.json`` (COCO's 80 object categories, in
  ``annotations_trainval2017.zip``): the floc localiser's faces and bodies are both COCO's
  ``person`` category (COCO has no separate face category), so both ROIs get the names of the
  categories in :data:`ROI_COCO_CATEGORIES` and their plurals ("person", "people").
- ``annotations/stuff_{val,train}2017.json`` (COCO-stuff, in
  ``stuff_annotations_trainval2017.zip``), if present: the places ROI gets the names of the
  COCO-stuff categories whose supercategory is part of a scene's layout
  (:data:`PLACE_STUFF_SUPERCATEGORIES`: sky, ground, water, plants, rock, buildings, walls,
  floors, ceilings, windows: what scene-selective cortex responds to), not the textiles, food
  or materials. Without the file the places ROI has no vocabulary.
- Written words: COCO annotates no text, so the words ROI has no vocabulary.

An ROI without vocabulary is listed under ``missing`` with the reason, and notebook 06 reports
it as "no category vocabulary available" instead of testing it. Only the ``categories`` list
of each file is used; COCO's train and val files share the same categories, so the smaller
val file is read when present.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lib.nsd.layout import NSDLayout

#: COCO object categories standing for each floc ROI's preferred category.
ROI_COCO_CATEGORIES = {"faces": ("person",), "bodies": ("person",)}
#: ROIs whose vocabulary is COCO-stuff's category names.
STUFF_ROIS = ("places",)
#: COCO-stuff supercategories that describe the layout of a scene (the places ROI's vocabulary).
PLACE_STUFF_SUPERCATEGORIES = ("sky", "ground", "water", "plant", "solid", "building",
                               "structural", "floor", "ceiling", "wall", "window")
#: Category ROIs of the analysis (NSD's floc localiser files).
CATEGORY_ROIS = ("faces", "bodies", "places", "words")
INSTANCE_FILES = ("instances_val2017.json", "instances_train2017.json")
STUFF_FILES = ("stuff_val2017.json", "stuff_train2017.json")
_DOWNLOAD_HINT = "python -m lib.nsd download --coco-only --coco-instances --dest NSD_ROOT"
_STUFF_HINT = ("download http://images.cocodataset.org/annotations/"
               "stuff_annotations_trainval2017.zip and extract stuff_val2017.json into "
               "NSD_ROOT/annotations/")
_IRREGULAR = {"person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep",
              "skis": "skis", "scissors": "scissors", "glasses": "glasses"}


def coco_categories(nsd_root: str | os.PathLike, files=INSTANCE_FILES) -> list[dict]:
    """COCO's category list (``id``, ``name``, ``supercategory``) from an annotation file.

    Parameters
    ----------
    nsd_root : path-like
        NSD root holding ``annotations/``.
    files : sequence of str
        Candidate file names in ``annotations/``; the first present is read.

    Raises
    ------
    FileNotFoundError
        None of ``files`` exists (names them and the command that downloads them).
    ValueError
        The file is not a COCO annotation file with a ``categories`` list.
    """
    folder = NSDLayout(nsd_root).annotations
    present = [folder / f for f in files if (folder / f).exists()]
    if not present:
        hint = _STUFF_HINT if tuple(files) == STUFF_FILES else _DOWNLOAD_HINT
        raise FileNotFoundError(
            f"COCO category annotations not found: expected {' or '.join(files)} in {folder}. "
            f"Fetch them with `{hint}`.")
    try:
        data = json.loads(present[0].read_text())
        cats = data["categories"]
        return [{"id": int(c["id"]), "name": str(c["name"]),
                 "supercategory": str(c.get("supercategory", ""))} for c in cats]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{present[0]} is not a COCO annotation file with a 'categories' list "
            f"({type(err).__name__}: {err}); re-extract it from COCO's annotation zip.") from err


def _plural(name: str) -> str:
    if name in _IRREGULAR:
        return _IRREGULAR[name]
    if name.endswith(("s", "x", "ch", "sh")):
        return name + "es"
    if name.endswith("y") and name[-2:-1] not in tuple("aeiou"):
        return name[:-1] + "ies"
    return name + "s"


def _stuff_words(name: str) -> list[str]:
    """Words of a COCO-stuff name: ``"wall-brick"`` -> ``["wall"]``; ``"other"`` is dropped."""
    head = name.split("-")[0].strip().lower()
    return [] if head in ("other", "") else [head, _plural(head)]


def coco_lexicon(nsd_root: str | os.PathLike) -> dict:
    """The category vocabulary of NSD's category ROIs, from COCO's category annotations.

    Parameters
    ----------
    nsd_root : path-like
        NSD root with ``annotations/instances_val2017.json`` (or ``instances_train2017.json``)
        and, optionally, ``annotations/stuff_val2017.json`` (COCO-stuff).

    Returns
    -------
    lexicon : dict
        ``{"source": str, "vocabulary": {roi: [words]}, "missing": {roi: reason}}`` (the
        format read by :func:`lib.decoding.roi_captions.load_lexicon`).
    """
    cats = {c["name"] for c in coco_categories(nsd_root)}
    vocab, missing = {}, {}
    for roi, names in ROI_COCO_CATEGORIES.items():
        absent = [n for n in names if n not in cats]
        if absent:
            raise ValueError(f"COCO categories {absent} not in the instances file of {nsd_root}; "
                             "is it COCO 2017's instances annotation?")
        vocab[roi] = sorted({w for n in names for w in (n, _plural(n))})
    sources = ["COCO 2017 instance categories (person: faces, bodies)"]
    for roi in STUFF_ROIS:
        try:
            stuff = coco_categories(nsd_root, STUFF_FILES)
        except FileNotFoundError as err:
            missing[roi] = f"no COCO-stuff annotations ({err})"
            continue
        words = sorted({w for c in stuff if c["supercategory"] in PLACE_STUFF_SUPERCATEGORIES
                        for w in _stuff_words(c["name"])})
        if not words:
            missing[roi] = ("the COCO-stuff file has no category of the supercategories "
                            f"{PLACE_STUFF_SUPERCATEGORIES}")
            continue
        vocab[roi] = words
        sources.append(f"COCO-stuff scene-layout category names ({roi})")
    for roi in CATEGORY_ROIS:
        if roi not in vocab and roi not in missing:
            missing[roi] = "COCO annotates no category for this ROI's preference"
    return {"source": "; ".join(sources), "vocabulary": vocab, "missing": missing}


def write_coco_lexicon(nsd_root: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write :func:`coco_lexicon` to ``out`` (JSON, atomically) and return the path."""
    from lib.io import write_json

    return write_json(out, coco_lexicon(nsd_root))
