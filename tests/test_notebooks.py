"""End to end: every notebook runs with papermill on the micro parameter set, the stages write
the files of DESIGN.md section 5, and the whole book builds and renders offline in Chromium."""

from __future__ import annotations

import json
import shutil

import h5py
import pandas as pd
import pytest

from lib import run
from lib.config import REPO_ROOT, subject_dir
from tests.browser import inspect_pages, requires_chromium
from tests.conftest import once
from tests.test_book import SCREENSHOTS, copy_book_skeleton

MICRO = REPO_ROOT / "notebooks" / "params" / "micro.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def micro_params():
    return run.load_params(MICRO)


@pytest.fixture(scope="session")
def micro_book(micro_run, tmp_path_factory):
    """The notebooks of micro.yaml, run once per session (``micro_run``, shared with the science
    tests), with the real book built around the executed copies (once per session too). The
    build fails on any Sphinx warning: a broken reference or an output the book cannot show."""
    _, executed, times = micro_run

    def make(root):
        copy_book_skeleton(root)
        shutil.copy(REPO_ROOT / "_toc.yml", root / "_toc.yml")
        shutil.copytree(executed, root / "book" / "run", dirs_exist_ok=True)
        run.build_book(root, strict=True)

    root, _ = once(tmp_path_factory, "micro_book", make)
    return root, times


@pytest.fixture(scope="module")
def micro_subject(micro_params):
    return subject_dir(REPO_ROOT / micro_params["derived_root"], micro_params["dataset"],
                       micro_params["subject"])


def test_every_listed_notebook_ran(micro_book, micro_params):
    _, times = micro_book
    for name in micro_params["notebooks"]:
        assert f"{name}.ipynb" in times


def test_stage_outputs_follow_the_contracts(micro_book, micro_subject):
    with h5py.File(micro_subject / "prepared.h5", "r") as f:
        n_trials, n_voxels = f["betas"].shape
        for name in ("trial", "nsd_id", "session", "run", "is_test"):
            assert f[name].shape == (n_trials,)
        assert f["voxel_ijk"].shape == (n_voxels, 3)
        assert f["is_test"][:].any() and not f["is_test"][:].all()
    assert json.loads((micro_subject / "captions.json").read_text())

    scores = pd.read_csv(micro_subject / "convergence" / "scores.csv")
    assert list(scores.columns[:10]) == ["model", "family", "modality", "n_params", "layer",
                                         "roi", "score", "val_score", "selected", "n_voxels"]
    assert set(scores["modality"]) == {"vision", "language"}
    # one layer per (model, roi) is chosen, by the validation score on training images
    assert scores.groupby(["model", "roi"])["selected"].sum().eq(1).all()
    chosen = scores[scores["selected"]]
    by_val = scores.loc[scores.groupby(["model", "roi"])["val_score"].idxmax()]
    assert sorted(chosen.index) == sorted(by_val.index)
    assert (scores["noise_ceiling"] > scores["noise_ceiling_null"]).all()

    metrics = json.loads((micro_subject / "decoding" / "metrics.json").read_text())
    assert "stage1" in metrics
    for m in metrics.values():
        assert set(m["captions"]) == {"brain", "shuffled_brain", "nearest_train",
                                      "image_upper_bound"}
        assert set(m["ratio_to_image_upper_bound"]) >= {"BLEU-1", "CIDEr"}
        for key in ("retrieval", "text_retrieval"):
            r = m[key]["brain"]
            # the draws actually made: one when k reaches the number of test images
            assert r["n_draws"] == r["options"]["n_draws"] == len(next(
                v for v in r.values() if isinstance(v, dict) and "draws" in v)["draws"])
            assert r["n_draws"] == 1 or r["k"] < r["n_items"]
            assert {"centring", "repeat_averaged", "tie", "k_requested"} <= set(r["options"])
    versus = metrics["stage2"]["stage2_vs_stage1"]
    assert versus["stage1_run"] == "stage1"
    assert {"difference", "ci95", "p_value"} <= set(versus["text_same_head"])
    captions = pd.read_csv(micro_subject / "decoding" / "captions_stage1.csv")
    assert list(captions.columns[:3]) == ["nsd_id", "caption", "references"]
    assert all(isinstance(json.loads(r), list) for r in captions["references"])
    # 05's controls: the decoded captions re-paired; nearest captions from training images only
    assert len(captions) == metrics["stage1"]["n_test"]
    assert sorted(captions.shuffled_brain.astype(str)) == sorted(captions.caption.astype(str))
    assert not set(captions.nearest_train_id) & set(captions.nsd_id)
    caps_m = metrics["stage1"]["captions"]
    for name, r in metrics["stage1"]["ratio_to_image_upper_bound"].items():
        if r is not None:
            assert r == pytest.approx(caps_m["brain"][name] / caps_m["image_upper_bound"][name])

    roi = pd.read_csv(micro_subject / "decoding" / "roi_captions.csv")
    assert {"roi", "stage", "caption", "mention_rate", "base_rate", "p_value"} <= set(roi.columns)
    tested = roi.dropna(subset=["p_value"])
    assert len(tested) and tested.p_value.between(1 / (1 + tested.n_null), 1).all()


def test_a_broken_zoo_entry_is_reported_and_the_chapter_completes(micro_book, micro_subject):
    """micro.yaml's language zoo holds one entry without a model folder."""
    from lib.encoding import read_failed_models

    root, _ = micro_book
    failed = read_failed_models(micro_subject / "convergence")
    assert list(failed["model"]) == ["broken-lm"]
    assert failed["status"].iloc[0] == "failed" and "no-such-model" in failed["hint"].iloc[0]
    scores = pd.read_csv(micro_subject / "convergence" / "scores.csv")
    assert "broken-lm" not in set(scores["model"]) and (scores["modality"] == "language").any()
    chapter = (root / "book" / "run" / "02_convergence.ipynb").read_text()
    assert "models did not run" in chapter and "broken-lm" in chapter


@pytest.mark.browser
@requires_chromium
def test_whole_book_renders_offline(micro_book, micro_params):
    root, _ = micro_book
    html = root / "_build" / "html"
    pages = [html / "book" / "intro.html"] + [
        html / "book" / "run" / f"{name}.html" for name in micro_params["notebooks"]
    ]
    for report in inspect_pages(pages, screenshot_dir=SCREENSHOTS / "micro"):
        assert report.remote_requests == [], (
            f"{report.path.name} requested {report.remote_requests}")
        n_figures = report.path.read_text().count("Plotly.newPlot")
        assert report.plotly_svgs >= n_figures, f"{report.path.name}: plotly figures did not draw"
        assert report.console_errors == [], f"{report.path.name}: {report.console_errors}"
