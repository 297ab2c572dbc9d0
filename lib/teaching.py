"""Exercises of the book, checked against the toy world's ground truth.

The toy world knows what an analysis of NSD never could (``<world>/truth/``: the tuning of every
voxel, its signal-to-noise ratio and receptive field, the scenes and their captions; see
``lib/toyworld/world.py``). Each chapter ends with exercises whose answers this module checks
against that truth, computed from the world's files, never stored::

    from lib.teaching import check
    check("00-single-trial-ceiling", 0.2, world="data/toy")

prints whether the answer is right and why, without giving the answer away, and returns a
:class:`Verdict`. ``answer=None`` (an exercise not tried yet) only prints what to do and reads
nothing, so the exercise cells run in every batch run, on every dataset.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from lib.config import resolve_path

#: ROI names of the book (``PreparedSubject.roi_mask``) for the simulator's voxel classes.
AREA_ROI = {"V1": "V1", "V2": "V2", "V3": "V3", "hV4": "hV4", "face": "faces",
            "body": "bodies", "word": "words", "place": "places"}


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`check`: ``correct`` and a message saying why."""

    exercise: str
    correct: bool
    message: str

    def __bool__(self) -> bool:
        return self.correct

    def __str__(self) -> str:
        return f"{'RIGHT' if self.correct else 'NOT YET'} [{self.exercise}] {self.message}"


# --------------------------------------------------------------------------- the world's truth
def world_root(path: str | os.PathLike) -> Path:
    """The toy world holding ``path`` (its root, the nsd root, a model or file inside it).

    Raises
    ------
    FileNotFoundError
        When no folder above ``path`` holds ``truth/WORLD.json`` (e.g. real NSD).
    """
    start = resolve_path(path)
    for folder in (start, *start.parents):
        if (folder / "truth" / "WORLD.json").is_file():
            return folder
    raise FileNotFoundError(
        f"{start} is not inside a toy world (no truth/WORLD.json above it): the exercises are "
        "checked against the toy world's ground truth; build it with `python -m lib.toyworld "
        "build --preset toy` and pass a path inside it (toy_root, nsd_root or a model path).")


def _json(root: Path, *parts: str):
    return json.loads(root.joinpath("truth", *parts).read_text())


@lru_cache(maxsize=4)
def _tuning(root: Path, subject: int) -> dict:
    """The ground-truth tuning of a subject's voxels (``truth/subjXX/tuning.h5``)."""
    import h5py

    with h5py.File(root / "truth" / f"subj{subject:02d}" / "tuning.h5", "r") as f:
        out = {k: f[k][()] for k in ("area", "rf_sigma", "snr", "in_nsdgeneral", "w_kind",
                                     "w_contrast", "session_offset", "session_gain")}
    out["area"] = out["area"].astype(str)
    return out


def _preset(root: Path) -> dict:
    return _json(root, "WORLD.json")["preset_settings"]


def _test_ids(root: Path) -> np.ndarray:
    """0-based nsd ids of the shared (test) images, from the world's stimulus info file."""
    import pandas as pd

    info = pd.read_csv(root / "nsd" / "nsddata" / "experiments" / "nsd" /
                       "nsd_stim_info_merged.csv", usecols=["nsdId", "shared1000"])
    return info.loc[info["shared1000"].astype(bool), "nsdId"].to_numpy()


# --------------------------------------------------------------------------- the exercises
def _most_reliable_roi(root, subject, **_):
    table = _json(root, f"subj{subject:02d}", "reliability.json")
    medians = {r: table[r]["median"] for r in AREA_ROI.values() if r in table}
    return max(medians, key=medians.get), (
        "compare the medians of the ROIs (not nsdgeneral) in the builder's reliability table")


def _single_trial_ceiling(root, subject, **_):
    t = _tuning(root, subject)
    snr = t["snr"][t["in_nsdgeneral"]]
    return float(np.median(snr / (snr + 1.0))), (
        "averaging n trials divides the noise variance by n: NC(n) = s / (s + 1/n), with s the "
        "signal-to-noise variance ratio; solve NC(3) for s, then set n = 1")


def _train_trials(root, subject, **_):
    p = _preset(root)
    return (p["n_images"] - p["n_shared"]) * p["n_repeats"], (
        "every training image is shown n_repeats times; count trials, not images")


def _zscore_none(root, subject, **_):
    t = _tuning(root, subject)
    spread = float(np.std(t["session_offset"].mean(1)) + np.std(t["session_gain"].mean(1)))
    return ("down" if spread > 0 else "same"), (
        "the repeats of an image fall in different sessions; ask what each session adds to "
        "every voxel's betas (the world's truth/README.md gives the formula)")


def _pooling(root, subject, **_):
    t = _tuning(root, subject)
    sigma = float(np.nanmedian(t["rf_sigma"][t["area"] == "V1"]))
    return ("grid" if sigma < 0.25 else "mean"), (
        "think about what a V1 voxel responds to (truth: receptive fields rf_x, rf_y, rf_sigma) "
        "and what a mean over the whole image keeps of it")


def _deeper_roi(root, subject, **_):
    t = _tuning(root, subject)
    kind = {a: float(np.abs(t["w_kind"][t["area"] == a]).mean()) for a in ("V1", "face")}
    return ("faces" if kind["face"] > kind["V1"] else "V1"), (
        "which of the two responds to pixels' local contrast, and which to whether an object "
        "kind is present, which a network computes only after several layers?")


def _chance(root, subject, k=None, **_):
    n_test = len(_test_ids(root))
    k = n_test if k is None else min(int(k), n_test)
    return 1.0 / k, "chance is one hit in k equally likely candidates; how many candidates?"


def _null_identification(root, subject, **_):
    if not _json(root, "WORLD.json").get("null"):
        raise ValueError(f"{root} is not a null world; this exercise is about the null world: "
                         "pass a path inside it, e.g. world='data/toy_null'.")
    return 1.0 / len(_test_ids(root)), (
        "in this world, do the brain responses carry any information about the images shown?")


def _positives(root, subject, **_):
    counts = {len(s["captions"]) for s in _json(root, "scenes.json")}
    if len(counts) != 1:
        raise ValueError(f"{root}: images have different numbers of captions {sorted(counts)}")
    return counts.pop(), "how many captions does each image of the world have (scenes.json)?"


def _face_rate(root, subject, **_):
    scenes = _json(root, "scenes.json")
    return float(np.mean([scenes[i]["has_face"] for i in _test_ids(root)])), (
        "count the test images whose scene holds a face (truth: scenes.json, has_face)")


def _min_p(root, subject, n=None, **_):
    if n is None:
        raise ValueError("pass the number of permutations or null patterns: n=...")
    return 1.0 / (1 + int(n)), (
        "the observed statistic counts as one of the permutations: p = (1 + #null >= "
        "observed) / (1 + n)")


def _face_roi(root, subject, **_):
    t = _tuning(root, subject)
    face = {a: float(t["w_kind"][t["area"] == a, 4].mean()) for a in AREA_ROI
            if (t["area"] == a).any()}
    return AREA_ROI[max(face, key=face.get)], (
        "which voxel class has the largest weight on the kind 'face' (truth: w_kind)?")


def _more_reliable_subject(root, subject, subjects=(1, 2), **_):
    medians = {s: _json(root, f"subj{int(s):02d}", "reliability.json")["nsdgeneral"]["median"]
               for s in subjects}
    return max(medians, key=medians.get), (
        "compare the subjects' nsdgeneral noise ceilings in the builder's reliability tables "
        "(truth/subjXX/reliability.json)")


def _all_subjects_perfect(root, subject, n_models=None, n_subjects=None, **_):
    if n_models is None or n_subjects is None:
        raise ValueError("pass the family's size and the number of subjects: "
                         "n_models=..., n_subjects=...")
    return (1.0 / math.factorial(int(n_models))) ** int(n_subjects), (
        "under the null every ordering of a family's scores is equally likely in each subject, "
        "and the subjects are independent brains")


#: id -> (truth function, kind: "choice" or "number", tolerance for numbers).
EXERCISES = {
    "00-most-reliable-roi": (_most_reliable_roi, "choice", None),
    "00-single-trial-ceiling": (_single_trial_ceiling, "number", 0.03),
    "01-train-trials": (_train_trials, "number", 0.5),
    "01-zscore-none": (_zscore_none, "choice", None),
    "02-pooling-v1": (_pooling, "choice", None),
    "02-deeper-roi": (_deeper_roi, "choice", None),
    "03-chance": (_chance, "number", 1e-3),
    "03-null-identification": (_null_identification, "number", 1e-3),
    "04-positives": (_positives, "number", 0.5),
    "04-chance-k": (_chance, "number", 1e-3),
    "05-face-rate": (_face_rate, "number", 0.02),
    "05-min-p": (_min_p, "number", 1e-4),
    "06-face-roi": (_face_roi, "choice", None),
    "06-min-p": (_min_p, "number", 1e-4),
    "07-more-reliable-subject": (_more_reliable_subject, "choice", None),
    "07-all-subjects-perfect": (_all_subjects_perfect, "number", 1e-6),
}


def check(exercise: str, answer, *, world, subject: int = 1, log=print, **context) -> Verdict:
    """Check an answer to one of the book's exercises against the toy world's truth.

    Parameters
    ----------
    exercise : str
        Its id (a key of :data:`EXERCISES`), as given in the chapter.
    answer : str, number or None
        Your answer. None: not tried yet (nothing is read; the message says what to do).
    world : path-like
        A path inside the toy world: its root (``toy_root``), ``nsd_root`` or a model path.
    subject : int
        The subject the exercise is about.
    log : callable or None
        Receives the verdict's text (None: silent).
    **context
        What the exercise depends on, as it says (e.g. ``k=5``, ``n=99``).

    Returns
    -------
    verdict : Verdict
        True when right; the message says why a wrong answer is wrong, without the answer.
    """
    if exercise not in EXERCISES:
        raise KeyError(f"unknown exercise {exercise!r}; known: {', '.join(EXERCISES)}")
    truth, kind, tol = EXERCISES[exercise]
    if answer is None:
        verdict = Verdict(exercise, False, "no answer yet: set `answer` above and run the cell.")
    else:
        expected, hint = truth(world_root(world), int(subject), **context)
        verdict = _compare(exercise, answer, expected, kind, tol, hint)
    if log is not None:
        log(str(verdict))
    return verdict


def _compare(exercise, answer, expected, kind, tol, hint) -> Verdict:
    if kind == "choice":
        ok = str(answer).strip().lower() == str(expected).lower()
        why = ("matches the world's ground truth." if ok
               else f"{answer!r} is not what the world's ground truth says. Hint: {hint}.")
        return Verdict(exercise, ok, why)
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return Verdict(exercise, False, f"expected a number, got {answer!r}.")
    if abs(value - expected) <= tol:
        return Verdict(exercise, True, f"within {tol:g} of the world's ground truth.")
    side = "too high" if value > expected else "too low"
    return Verdict(exercise, False, f"{value:g} is {side} (tolerance {tol:g}). Hint: {hint}.")
