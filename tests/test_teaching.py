"""lib.teaching: the exercises' answer checker, against the micro world's ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lib import teaching
from lib.teaching import check


def test_single_trial_ceiling_measured_from_the_betas_is_right(micro_root):
    """A student's measurement (the notebook's own code) passes; a 3-trial value fails."""
    from lib.scoring import noise_ceiling
    from lib.toyworld import explore

    general = explore.roi_mask(micro_root, 1, "nsdgeneral", (1,))
    reps, _, _ = explore.repeat_averaged(micro_root, 1, general)
    measured = float(np.median(noise_ceiling(reps, n_average=1)))
    assert check("00-single-trial-ceiling", measured, world=micro_root, log=None)
    three = float(np.median(noise_ceiling(reps, n_average=3)))
    wrong = check("00-single-trial-ceiling", three, world=micro_root, log=None)
    assert not wrong and "too high" in wrong.message and "Hint" in wrong.message
    assert f"{three:g}" in wrong.message and f"{measured:.2f}" not in wrong.message


def test_most_reliable_roi_from_the_builders_table(micro_root):
    table = json.loads((micro_root / "truth" / "subj01" / "reliability.json").read_text())
    rois = ["V1", "V2", "V3", "hV4", "faces", "bodies", "places", "words"]
    ranked = sorted(rois, key=lambda r: table[r]["median"], reverse=True)
    assert check("00-most-reliable-roi", ranked[0], world=micro_root / "nsd", log=None)
    wrong = check("00-most-reliable-roi", ranked[-1], world=micro_root, log=None)
    assert not wrong and ranked[0] not in wrong.message


def test_face_roi_and_counts(micro_root):
    world = json.loads((micro_root / "truth" / "WORLD.json").read_text())["preset_settings"]
    assert check("06-face-roi", "faces", world=micro_root, log=None)
    assert not check("06-face-roi", "places", world=micro_root, log=None)
    n_test = world["n_shared"]
    assert check("03-chance", 1 / n_test, world=micro_root, log=None)
    assert check("04-chance-k", 1 / 5, world=micro_root, k=5, log=None)
    low = check("04-chance-k", 1 / (5 * n_test), world=micro_root, k=5, log=None)
    assert not low and "too low" in low.message
    train = (world["n_images"] - world["n_shared"]) * world["n_repeats"]
    assert check("01-train-trials", train, world=micro_root, log=None)
    assert not check("01-train-trials", world["n_images"] - world["n_shared"],
                     world=micro_root, log=None)
    assert check("06-min-p", 0.1, world=micro_root, n=9, log=None)


def test_predictions_follow_the_world(micro_root):
    """Direction answers come from the truth: retinotopic V1, face tuning, session offsets."""
    assert check("02-pooling-v1", "grid", world=micro_root, log=None)
    assert not check("02-pooling-v1", "mean", world=micro_root, log=None)
    assert check("02-deeper-roi", "faces", world=micro_root, log=None)
    assert check("01-zscore-none", "down", world=micro_root, log=None)
    with pytest.raises(ValueError, match="not a null world"):
        check("03-null-identification", 0.05, world=micro_root, log=None)


def test_face_rate_counts_the_test_scenes(micro_root):
    import pandas as pd

    scenes = json.loads((micro_root / "truth" / "scenes.json").read_text())
    info = pd.read_csv(micro_root / "nsd" / "nsddata" / "experiments" / "nsd" /
                       "nsd_stim_info_merged.csv")
    test = info.loc[info["shared1000"].astype(bool), "nsdId"]
    rate = float(np.mean([scenes[i]["has_face"] for i in test]))
    assert check("05-face-rate", rate, world=micro_root, log=None)
    assert not check("05-face-rate", rate + 0.1, world=micro_root, log=None)


def test_no_answer_reads_nothing_and_bad_input_is_explained(tmp_path, capsys):
    verdict = check("03-chance", None, world=tmp_path / "nowhere")
    assert not verdict and "no answer yet" in capsys.readouterr().out
    with pytest.raises(KeyError, match="unknown exercise"):
        check("99-nothing", 1, world=tmp_path)
    with pytest.raises(FileNotFoundError, match="not inside a toy world"):
        check("03-chance", 0.5, world=tmp_path)
    assert "expected a number" in teaching._compare("x", "abc", 1.0, "number", 0.1, "h").message


def test_every_chapter_ends_with_checkable_exercises():
    """2-4 exercises per chapter, solutions folded, one 'predict', every id known to check."""
    import re

    import nbformat

    from lib.config import REPO_ROOT

    for path in sorted((REPO_ROOT / "notebooks").glob("0*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        start = next(i for i, c in enumerate(cells) if c.source.startswith("## Exercises"))
        tail = cells[start:]
        text = "\n".join(c.source for c in tail if c.cell_type == "markdown")
        n = text.count("```{exercise}")
        assert 2 <= n <= 4 and text.count(":class: dropdown") == n, path.name
        assert "**Predict" in text, f"{path.name}: no exercise asks for a prediction"
        ids = re.findall(r'check\("([^"]+)"', "\n".join(c.source for c in tail))
        assert len(ids) == n and set(ids) <= set(teaching.EXERCISES), path.name
        assert all(i.startswith(path.name[:2]) for i in ids), path.name


def test_across_subject_exercises(micro_root):
    medians = {s: json.loads((micro_root / "truth" / f"subj0{s}" / "reliability.json")
                             .read_text())["nsdgeneral"]["median"] for s in (1, 2)}
    best, worst = sorted(medians, key=medians.get, reverse=True)
    assert check("07-more-reliable-subject", best, world=micro_root, subjects=[1, 2], log=None)
    assert not check("07-more-reliable-subject", worst, world=micro_root, subjects=[1, 2],
                     log=None)
    assert check("07-all-subjects-perfect", 1 / 1296, world=micro_root, n_models=3,
                 n_subjects=4, log=None)
    wrong = check("07-all-subjects-perfect", 1 / 6, world=micro_root, n_models=3, n_subjects=4,
                  log=None)
    assert not wrong and "too high" in wrong.message
