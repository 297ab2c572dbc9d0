"""The science, asserted: where the brain sees the images the decoders beat their controls, and
on a null world (the same world whose brain responses carry no information about the images)
every chapter reports no effect.

The micro world and its null world go through the notebooks once per session (``micro_run``
and ``micro_null_run`` in tests/conftest.py; the normal run is the one the end-to-end test
renders). The toy world and its null world are checked too where their books have been run
(``make book``; ``python -m lib.run --params notebooks/params/null.yaml``): the micro BLIP-2
models are too small to caption or retrieve text, so the caption and brain -> text checks skip on
micro (saying so, with the numbers) and bite on the toy world. The tests read only
the files the stages write (DESIGN.md section 5): ``decoding/metrics.json``,
``decoding/stage2/text_retrieval.json``, ``decoding/roi_captions.csv``,
``convergence/scores.csv`` and ``convergence/voxel_scores.h5``.

The micro world has 20 test images, so the bounds are loose, but each can fail: a decoder that
ignores the brain fails the normal-world tests, and a leak of image information into a null
brain (or a biased statistic) fails the null-world tests.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lib.config import REPO_ROOT, subject_dir

pytestmark = pytest.mark.slow

#: Runs of the captioning notebook checked here, and the metric of the main permutation test.
RUNS = ("stage1", "stage2")
MAIN_METRIC = "CIDEr"
#: Caption metrics whose brain-vs-shuffled test must stay null on the null world.
NULL_METRICS = ("CIDEr", "METEOR")
ALPHA = 0.01


# --------------------------------------------------------------------------- reading results
def _subject(params: dict):
    return subject_dir(REPO_ROOT / params["derived_root"], params["dataset"], params["subject"])


def _metrics(params: dict) -> dict:
    return json.loads((_subject(params) / "decoding" / "metrics.json").read_text())


def _image_retrieval(metrics: dict, run: str, condition: str = "brain") -> dict:
    """Brain -> image k-way top-1 of one run and condition, with its ``chance`` and ``k``."""
    result = metrics[run]["retrieval"][condition]
    return {**result["brain_to_image"], **{k: result[k] for k in ("chance", "k") if k in result}}


def _chance(result: dict) -> float:
    return float(result.get("chance", 1.0 / result["k"]))


def _interval(result: dict) -> tuple[float, float]:
    """The 95% interval that counts: the binomial one of a single k-way test when k equals the
    number of test images (one draw), else the interval over draws."""
    key = "ci95_binomial" if "ci95_binomial" in result else "ci95"
    lo, hi = result[key]
    return float(lo), float(hi)


def _scores(params: dict) -> pd.DataFrame:
    return pd.read_csv(_subject(params) / "convergence" / "scores.csv")


def _bh_fraction(p: np.ndarray, q: float = 0.05) -> float:
    """Fraction of the finite p-values that pass Benjamini-Hochberg at ``q``.

    Written here, independently of lib, so the checks do not share a bug with the maps.
    """
    p = np.sort(np.asarray(p, float)[np.isfinite(p)])
    passed = p <= q * np.arange(1, p.size + 1) / p.size
    return float((np.flatnonzero(passed).max() + 1) / p.size) if passed.any() else 0.0


def _fdr_significant_fraction(r: np.ndarray, n: int, q: float = 0.05) -> float:
    """Fraction of voxels whose test correlation ``r`` (n images) passes a one-sided t test,
    BH-FDR q (a NaN r counts as 0)."""
    r = np.nan_to_num(np.asarray(r, float), nan=0.0)
    t = r * np.sqrt((n - 2) / np.clip(1 - r**2, 1e-12, None))
    return _bh_fraction(stats.t.sf(t, n - 2), q)


def _significant_fraction(params: dict) -> dict[str, float]:
    """Fraction of nsdgeneral voxels significant (FDR 0.05) in each model's mapped layer."""
    with h5py.File(_subject(params) / "prepared.h5", "r") as f:
        n_test = len(np.unique(f["nsd_id"][:][f["is_test"][:]]))  # test images scored in 02
    out = {}
    with h5py.File(_subject(params) / "convergence" / "voxel_scores.h5", "r") as f:
        for name, g in f["models"].items():
            out[name] = _fdr_significant_fraction(g["best_score"][:], n_test)
    return out


def _require_a_captioner(metrics: dict, run: str) -> None:
    """Skip (with the numbers) when the world's captioner does not caption its own images.

    Caption metrics can only tell brain from shuffled when the captioner, given the test image
    itself, beats the shuffled control; otherwise every condition gets the same (degenerate)
    caption and the permutation test is uninformative (p = 1 whatever the brain).
    """
    captions = metrics[run]["captions"]
    upper = captions["image_upper_bound"][MAIN_METRIC]
    control = captions["shuffled_brain"][MAIN_METRIC]
    if not upper > control:
        pytest.skip(f"the captioner does not caption this world's test images ({MAIN_METRIC}: "
                    f"image itself {upper:.3f}, shuffled brain {control:.3f}); the caption tests "
                    "need a captioner that works (lib/toyworld/models, micro preset)")


def _require_an_itm(table: dict) -> None:
    """Skip when the ITM model cannot retrieve captions even from the true image tokens."""
    ceiling = table["image (true tokens): ceiling|ITM vision_projection"]
    lo, _ = _interval(ceiling["brain_to_text"])
    if not lo > ceiling["chance"]:
        pytest.skip(f"the ITM model's own ceiling (true image tokens) is at chance "
                    f"({ceiling['brain_to_text']['mean']:.3f}, chance {ceiling['chance']:.3f}); "
                    "brain -> text retrieval cannot compare the stages on this world")


# --------------------------------------------------------------------------- the worlds
def _finished_book(name: str) -> dict:
    """Parameters of a book already run by ``lib.run`` (``make book``, or ``null.yaml``), or a
    skip naming the command that produces it."""
    from lib.run import load_params

    params = load_params(REPO_ROOT / "notebooks" / "params" / f"{name}.yaml")
    needed = [_subject(params) / "decoding" / "metrics.json",
              _subject(params) / "decoding" / "roi_captions.csv",
              _subject(params) / "convergence" / "scores.csv"]
    if not all(p.is_file() for p in needed):
        pytest.skip(f"the {name} book has not been run here (python -m lib.run --params "
                    f"notebooks/params/{name}.yaml); only micro runs in every test session")
    return params


@pytest.fixture(params=["micro", "toy"])
def world(request):
    """A world whose brain sees the images: micro (run in every session) and, where its book
    has been run, the toy world (whose captioner and ITM model work)."""
    if request.param == "micro":
        return request.getfixturevalue("micro_run")[0]
    return _finished_book(request.param)


@pytest.fixture(params=["micro_null", "null"])
def null_world(request):
    """The null worlds: micro's (run in every session) and, where its book has been run, the
    toy world's (``null.yaml``)."""
    if request.param == "micro_null":
        return request.getfixturevalue("micro_null_run")[0]
    return _finished_book(request.param)


# --------------------------------------------------------------------------- the normal world
@pytest.mark.parametrize("run", RUNS)
def test_brain_captions_beat_shuffled(world, run):
    params = world
    metrics = _metrics(params)
    _require_a_captioner(metrics, run)
    test = metrics[run]["permutation_brain_vs_shuffled"][MAIN_METRIC]
    assert test["p_value"] < ALPHA, (run, test)
    assert test["observed_diff"] > 0


@pytest.mark.parametrize("run", RUNS)
def test_retrieval_lower_bound_above_chance(world, run):
    params = world
    result = _image_retrieval(_metrics(params), run)
    lo, _ = _interval(result)
    assert lo > _chance(result), (run, result)


def test_stage2_matches_stage1_on_the_tokens(world):
    """Stage 2 keeps stage 1's fit to the query tokens (its loss is 0.7 MSE to them): its
    brain -> image top-1 on the tokens reaches stage 1's within stage 2's 95% interval."""
    params = world
    metrics = _metrics(params)
    stage1, stage2 = _image_retrieval(metrics, "stage1"), _image_retrieval(metrics, "stage2")
    _, hi = _interval(stage2)
    assert hi >= stage1["mean"], (stage1, stage2)


def test_stage2_matches_stage1_on_its_own_criterion(world):
    """Stage 2 is trained for brain -> text retrieval: through its own head it retrieves
    captions at least as well as stage 1 does through the ITM head, within its interval."""
    params = world
    table = json.loads((_subject(params) / "decoding" / "stage2" / "text_retrieval.json")
                       .read_text())
    _require_an_itm(table)
    stage1 = table["stage1|ITM vision_projection"]["brain_to_text"]
    stage2 = table["stage2|stage-2 brain projection"]["brain_to_text"]
    _, hi = _interval(stage2)
    assert hi >= stage1["mean"], (stage1, stage2)
    lo, _ = _interval(stage2)
    assert lo > table["stage2|stage-2 brain projection"]["chance"], stage2


def test_some_voxels_are_significant(world):
    """The map test has power on the normal world (so its emptiness on the null world means
    something): early visual voxels of the best-mapped model pass FDR."""
    params = world
    assert max(_significant_fraction(params).values()) > 0.02


# --------------------------------------------------------------------------- the null world
def test_null_world_is_null(null_world):
    params = null_world
    world = json.loads((REPO_ROOT / params["toy_root"] / "truth" / "WORLD.json").read_text())
    assert world["null"] is True


@pytest.mark.parametrize("run", RUNS)
def test_null_captions_do_not_beat_shuffled(null_world, run):
    params = null_world
    metrics = _metrics(params)
    _require_a_captioner(metrics, run)  # else p = 1 for free
    tests = metrics[run]["permutation_brain_vs_shuffled"]
    for metric in NULL_METRICS:
        assert tests[metric]["p_value"] > ALPHA, (run, metric, tests[metric])


@pytest.mark.parametrize("run", RUNS)
def test_null_retrieval_interval_includes_chance(null_world, run):
    params = null_world
    result = _image_retrieval(_metrics(params), run)
    lo, hi = _interval(result)
    assert lo <= _chance(result) <= hi, (run, result)


def test_null_convergence_scores_near_zero(null_world):
    params = null_world
    scores = _scores(params)
    general = scores[scores["roi"] == "nsdgeneral"]
    assert len(general) > 0
    assert abs(general["score"].mean()) < 0.05, general["score"].describe()
    assert general["score"].abs().max() < 0.15, general.loc[general["score"].abs().idxmax()]
    # Needs the convergence part of issue 12 (`selected`, DESIGN.md section 5): the layers
    # chosen on training folds score about zero on the test images too.
    chosen = general[general["selected"].astype(bool)]
    assert len(chosen) > 0 and abs(chosen["score"].mean()) < 0.05, chosen


def test_null_noise_ceiling_near_zero(null_world):
    """A null brain's noise ceiling is about zero and almost no voxel's image variance passes
    its F-test (FDR q 0.05).

    NSD's formula clips a noisy signal variance at zero per voxel and read 0.18-0.23 (as r) on
    the micro null world; the unbiased estimate scatters around zero, widely with the micro
    world's 20 test images (its 95% chance level is about 0.05 of the variance), so the bound on
    the pooled nsdgeneral value is loose (the normal micro world reads about 0.6).
    """
    params = null_world
    scores = _scores(params)
    general = scores.drop_duplicates("roi").set_index("roi").loc["nsdgeneral"]
    assert general["noise_ceiling"] ** 2 < 0.15, general  # stored as r = sqrt(max(NC, 0))
    with h5py.File(_subject(params) / "convergence" / "voxel_scores.h5", "r") as f:
        p_values = f["noise_ceiling_p"][:]
    assert _bh_fraction(p_values) < 0.01


def test_noise_ceiling_above_chance(world):
    """The same checks have power where the brain sees the images."""
    scores = _scores(world)
    general = scores.drop_duplicates("roi").set_index("roi").loc["nsdgeneral"]
    assert general["noise_ceiling"] > general["noise_ceiling_null"], general
    with h5py.File(_subject(world) / "convergence" / "voxel_scores.h5", "r") as f:
        assert _bh_fraction(f["noise_ceiling_p"][:]) > 0.05


def test_null_significant_voxel_maps_are_empty(null_world):
    params = null_world
    fractions = _significant_fraction(params)
    assert fractions and max(fractions.values()) < 0.01, fractions


def test_null_roi_captions_not_above_base_rate(null_world):
    # Needs the ROI part of issue 12: roi_captions.csv gains `base_rate` (matched null patterns)
    # and `p_value` per ROI and stage (DESIGN.md section 5).
    params = null_world
    table = pd.read_csv(_subject(params) / "decoding" / "roi_captions.csv")
    tested = table.dropna(subset=["p_value"])
    assert len(tested) > 0, "no ROI has a p-value"
    assert (tested["p_value"] >= 0.05).all(), tested[["roi", "stage", "base_rate", "p_value"]]


@pytest.mark.parametrize("run", RUNS)
def test_shuffled_brain_retrieval_is_at_chance(world, run):
    """The retrieval control: predictions paired with the wrong images retrieve at chance."""
    params = world
    result = _image_retrieval(_metrics(params), run, "shuffled_brain")
    lo, hi = _interval(result)
    assert lo <= _chance(result) <= hi, (run, result)
