"""The toy world: scenes, captions, the simulated brain and its NSD-format files.

File checks read the files with the readers a user of real NSD would use (scipy.io.loadmat,
pandas, h5py, nibabel) and compare them with one another and with independent
computations (np.corrcoef, re-rendering scenes from the ground truth).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from lib.nsd.layout import ROI_LABELS
from lib.toyworld import anatomy, brain, stimulus_features
from lib.toyworld.build import build, build_world
from lib.toyworld.captions import COLOR_WORDS, NOUNS, PLACE_NOUNS, PLACE_PHRASES, caption_scene
from lib.toyworld.presets import PRESETS, WorldPreset, get_preset
from lib.toyworld.scenes import (
    COLOR_NAMES,
    COLORS,
    KINDS,
    PLACES,
    TYPICAL_COLORS,
    Scene,
    SceneObject,
    render_scene,
    sample_scenes,
    scene_latents,
)

#: A world small enough to build twice in a test.
TINY = WorldPreset(name="tiny", n_subjects=2, n_images=30, n_shared=6, n_repeats=3,
                   n_sessions=2, n_runs=3, n_slots=18, trials_per_run=(15,))

NSD = "nsd"
EXPDESIGN = "nsd/nsddata/experiments/nsd/nsd_expdesign.mat"
STIMINFO = "nsd/nsddata/experiments/nsd/nsd_stim_info_merged.csv"
BRICK = "nsd/nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
BETAS = "nsd/nsddata_betas/ppdata/subj{:02d}/func1pt8mm/betas_fithrf_GLMdenoise_RR/" \
        "betas_session{:02d}.nii.gz"
ROI = "nsd/nsddata/ppdata/subj{:02d}/func1pt8mm/roi/{}.nii.gz"


@pytest.fixture(scope="module")
def micro(micro_root):
    """The session's micro world (``data/micro``, tests/conftest.py); returns (root, wall s of
    its world build)."""
    return micro_root, json.loads((micro_root / "BUILD.json").read_text())["world_wall_s"]


# --------------------------------------------------------------------------- scenes
def test_scenes_are_deterministic_and_valid():
    a = sample_scenes(60, np.random.default_rng(3))
    b = sample_scenes(60, np.random.default_rng(3))
    assert a == b
    assert sample_scenes(60, np.random.default_rng(4)) != a
    for s in a:
        assert s.place in PLACES and 1 <= len(s.objects) <= 3
        for o in s.objects:
            assert o.kind in KINDS and o.color in COLOR_NAMES
            assert 0.15 <= o.size <= 0.45
            assert o.size / 2 <= o.x + 1e-6 and o.x <= 1 - o.size / 2 + 1e-6
            assert (o.kind == "word") == bool(o.text)
        json.dumps(scene_latents(s))  # serialisable
    kinds = {o.kind for s in a for o in s.objects}
    assert kinds == set(KINDS)
    img = render_scene(a[0], size=48)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    assert np.array_equal(img, render_scene(a[0], size=48))


def test_render_puts_the_object_where_the_scene_says():
    scene = Scene("grass", (SceneObject("square", "red", 0.3, 0.25, 0.75),))
    img = render_scene(scene, 64).astype(int)
    red = np.array(COLORS["red"])
    # centre of the square (x=0.25 -> column 16, y=0.75 -> row 48) is red
    assert np.abs(img[48, 16] - red).max() < 10
    # far from it (top right) the grass shows: green dominates, not red
    corner = img[:16, 40:].reshape(-1, 3).mean(0)
    assert corner[1] > corner[0] + 50
    lat = scene_latents(scene)
    assert lat["has_square"] and not lat["has_face"] and lat["area_square"] == pytest.approx(0.09)


# --------------------------------------------------------------------------- captions
def _mentions(caption: str, obj: SceneObject) -> bool:
    return any(n in caption for n in NOUNS[obj.kind])


def test_captions_describe_the_scene():
    scenes = sample_scenes(150, np.random.default_rng(11))
    relations = 0
    for i, s in enumerate(scenes):
        caps = caption_scene(s, np.random.default_rng(i))
        assert caps == caption_scene(s, np.random.default_rng(i))  # deterministic
        assert len(caps) == 5 and len(set(caps)) == 5
        words = " ".join(caps).lower()
        for c in caps:
            assert c[0].isupper() and c.endswith(".")
        # every object named (with its colour) somewhere; category objects by category words
        for o in s.objects:
            assert any(_mentions(c, o) and any(w in c for w in COLOR_WORDS[o.color])
                       for c in caps), (s, caps)
        # the place is said in most captions
        said = PLACE_PHRASES[s.place] + PLACE_NOUNS[s.place]
        assert sum(any(p.lower() in c.lower() for p in said) for c in caps) >= 2, caps
        relations += any(r in words for r in ("above", "below", "next to", "left of"))
    assert relations > 30


def test_caption_relations_match_geometry():
    top = SceneObject("circle", "red", 0.25, 0.5, 0.2)
    bottom = SceneObject("square", "blue", 0.25, 0.5, 0.8)
    scene = Scene("room", (top, bottom))
    seen = 0
    for k in range(40):
        for c in caption_scene(scene, np.random.default_rng(k)):
            m = re.search(r"(red|blue) [a-z ]*?(above|below|under) (a|an|the) (red |blue )?", c)
            if not m:
                continue
            seen += 1
            first, rel = m.group(1), m.group(2)
            assert (first == "red") == (rel == "above"), c
    assert seen > 5


def test_category_objects_use_readable_words():
    for kind, words in (("face", "face"), ("body", ("person", "figure")), ("word", ("word",
                                                                                   "sign"))):
        scene = Scene("sky", (SceneObject(kind, "red", 0.3, 0.5, 0.5, "AB" if kind == "word"
                                          else ""),))
        caps = caption_scene(scene, np.random.default_rng(0))
        words = (words,) if isinstance(words, str) else words
        assert sum(any(w in c for w in words) for c in caps) >= 3, caps


def test_scenes_have_typical_colours():
    scenes = sample_scenes(6000, np.random.default_rng(3))
    kind_color = np.zeros((len(KINDS), len(COLOR_NAMES)))
    for s in scenes:
        for o in s.objects:
            kind_color[KINDS.index(o.kind), COLOR_NAMES.index(o.color)] += 1
    assert (kind_color > 0).all()  # every combination occurs
    for kind, colors in TYPICAL_COLORS.items():
        row = kind_color[KINDS.index(kind)] / kind_color[KINDS.index(kind)].sum()
        typical = [row[COLOR_NAMES.index(c)] for c in colors]
        atypical = [row[i] for i, c in enumerate(COLOR_NAMES) if c not in colors]
        assert min(typical) > 2 * max(atypical), (kind, row)


def test_caption_words_follow_a_zipf_law():
    scene = Scene("room", (SceneObject("circle", "red", 0.3, 0.5, 0.5),))
    text = " ".join(c for k in range(300) for c in caption_scene(scene, np.random.default_rng(k)))
    for words in (NOUNS["circle"], COLOR_WORDS["red"]):
        counts = [len(re.findall(rf"\b{w}\b", text, flags=re.IGNORECASE)) for w in words]
        assert counts[0] == max(counts) and counts[0] > 3 * counts[1] / 2, (words, counts)
        assert min(counts) > 0, (words, counts)  # the long tail is there


# --------------------------------------------------------------------------- brain
def test_semantic_axes_are_the_worlds_principal_axes():
    W = stimulus_features.semantic_axes(0, n_dims=6, n_scenes=3000)
    assert W.shape == (len(PLACES) + len(KINDS) + len(COLOR_NAMES) + 1, 6)
    np.testing.assert_array_equal(W, stimulus_features.semantic_axes(0, n_dims=6, n_scenes=3000))
    # on fresh scenes of the same world: uncorrelated coordinates, the leading axes carry the
    # most variance, and more than random directions do
    scenes = sample_scenes(3000, np.random.default_rng(5))
    concepts = stimulus_features.concept_vector([scene_latents(s) for s in scenes])
    coords = concepts @ W
    var = coords.var(0)
    assert var[:3].mean() > var[3:].mean()
    corr = np.corrcoef(coords.T)
    assert np.abs(corr[~np.eye(6, dtype=bool)]).max() < 0.1
    z = (concepts - concepts.mean(0)) / concepts.std(0)
    rand = np.random.default_rng(0).normal(size=(z.shape[1], 50))
    rand /= np.linalg.norm(rand, axis=0)
    assert var[0] > 1.3 * (z @ rand).var(0).mean()


def test_rois_are_anatomically_placed():
    grid = anatomy.make_grid(4.0)
    assert all(35 <= n <= 50 for n in grid.shape)  # 4 mm, cropped to the brain
    np.testing.assert_allclose(np.diag(grid.affine)[:3], 4.0)
    rois = anatomy.make_rois(grid, np.random.default_rng(1))
    mm = grid.mm()
    n_gen = int((rois.volumes["nsdgeneral"] == 1).sum())
    assert 1000 <= n_gen <= 3000
    for fname, labels in ROI_LABELS.items():
        if fname == "nsdgeneral":
            continue
        vol = rois.volumes[fname]
        assert vol.dtype == np.int16 and set(np.unique(vol)) <= {-1, 0, *labels}
        assert np.all(vol[~grid.brain] == -1) and np.all(vol[grid.brain] >= 0)
        for lab in labels:
            where = mm[vol == lab]
            if fname == "floc-faces" and lab == 5:
                continue  # aTL-faces is small and may miss grey matter on one side
            assert (where[:, 0] < 0).any() and (where[:, 0] > 0).any(), (fname, lab)

    def centre(fname, labels):
        return mm[np.isin(rois.volumes[fname], labels)].mean(0)

    v1, hv4 = centre("prf-visualrois", (1, 2)), centre("prf-visualrois", (7,))
    ffa = centre("floc-faces", (2,))
    assert abs(mm[np.isin(rois.volumes["prf-visualrois"], (1, 2))][:, 0]).mean() < 16  # medial
    assert v1[1] < -75  # occipital
    assert abs(mm[rois.volumes["prf-visualrois"] == 7][:, 0]).mean() > 20  # hV4 lateral
    assert hv4[2] < v1[2]  # and ventral
    assert ffa[2] < 0 and ffa[1] > v1[1] + 20  # fusiform: ventral, anterior to V1
    # V1v represents the upper visual field, V1d the lower; left hemisphere the right field
    ang = rois.polar_angle
    v1v_left = (rois.volumes["prf-visualrois"] == 1) & (mm[..., 0] < 0)
    assert np.all(np.sin(ang[v1v_left]) >= 0) and np.all(np.cos(ang[v1v_left]) >= -1e-9)
    v1d = rois.volumes["prf-visualrois"] == 2
    assert np.all(np.sin(ang[v1d]) <= 1e-9)


# --------------------------------------------------------------------------- files
def test_micro_build_is_fast_and_cached(micro):
    root, seconds = micro
    stamp = json.loads((root / "BUILD.json").read_text())
    assert stamp["preset"] == "micro" and stamp["seed"] == 0
    # CPU time, not wall time: a shared machine stretches the wall clock several-fold (the
    # world alone takes about 10 s on 2 idle cores, ~12 s of CPU)
    assert stamp["world_cpu_s"] < 60, f"micro world took {stamp['world_cpu_s']:.1f} s of CPU " \
        f"({seconds:.1f} s wall)"
    before = (root / BETAS.format(1, 1)).stat().st_mtime_ns
    t = time.perf_counter()
    build(preset="micro", seed=0, out=root)
    assert time.perf_counter() - t < 2
    assert (root / BETAS.format(1, 1)).stat().st_mtime_ns == before


def test_expdesign_and_stim_info_are_nsd_shaped_and_consistent(micro):
    import pandas as pd
    from scipy.io import loadmat

    root, _ = micro
    p = get_preset("micro")
    mat = loadmat(root / EXPDESIGN)
    mo, subjectim, sharedix, pattern = (mat[k] for k in ("masterordering", "subjectim",
                                                         "sharedix", "stimpattern"))
    assert mo.shape == (1, p.n_images * p.n_repeats)
    assert subjectim.shape == (p.n_subjects, p.n_images) and sharedix.shape == (1, p.n_shared)
    assert pattern.shape == (p.n_sessions, p.n_runs, p.n_slots)
    assert pattern.sum() == mo.size and set(np.unique(pattern)) == {0, 1}
    assert np.all(pattern[..., 0] == 0) and np.all(pattern[..., -1] == 0)  # blanks at the ends
    counts = np.bincount(mo.ravel().astype(int), minlength=p.n_images + 1)
    assert counts[0] == 0 and np.all(counts[1:] == p.n_repeats)
    for k in range(p.n_subjects):
        np.testing.assert_array_equal(subjectim[k, : p.n_shared], sharedix[0])
    own = [set(subjectim[k, p.n_shared:]) for k in range(p.n_subjects)]
    assert not own[0] & own[1]
    assert subjectim.min() >= 1 and subjectim.max() <= p.n_stimuli

    info = pd.read_csv(root / STIMINFO)
    assert info.columns[0] == "Unnamed: 0"  # NSD's csv has an unnamed index column
    for col in ("cocoId", "cocoSplit", "nsdId", "shared1000", "subject1", "subject2",
                "subject1_rep0", "subject1_rep2", "subject2_rep1"):
        assert col in info.columns
    np.testing.assert_array_equal(info["nsdId"], np.arange(p.n_stimuli))
    assert info["cocoId"].is_unique and set(info["cocoSplit"]) <= {"train2017", "val2017"}
    np.testing.assert_array_equal(np.flatnonzero(info["shared1000"]), sharedix[0] - 1)
    for k in (1, 2):
        shown = info[info[f"subject{k}"] == 1]
        assert set(shown["nsdId"] + 1) == set(subjectim[k - 1])
        reps = shown[[f"subject{k}_rep{r}" for r in range(3)]].to_numpy()
        assert reps.min() >= 1 and reps.max() <= mo.size
        # trial t (1-based) of subject k shows subjectim[k, masterordering[t]]
        for nsd_id, row in zip(shown["nsdId"], reps):
            shown_ids = subjectim[k - 1, mo[0, row - 1].astype(int) - 1] - 1
            assert np.all(shown_ids == nsd_id)
        assert info.loc[info[f"subject{k}"] == 0, f"subject{k}_rep0"].eq(0).all()


def test_stimuli_captions_and_truth_agree(micro):
    import h5py
    import pandas as pd

    root, _ = micro
    p = get_preset("micro")
    info = pd.read_csv(root / STIMINFO)
    truth = json.loads((root / "truth" / "scenes.json").read_text())
    with h5py.File(root / BRICK, "r") as f:
        brick = f["imgBrick"]
        assert brick.shape == (p.n_stimuli, p.image_size, p.image_size, 3)
        assert brick.dtype == np.uint8
        for i in (0, p.n_stimuli - 1):
            t = truth[i]
            scene = Scene(t["place"], tuple(SceneObject(**o) for o in t["objects"]))
            np.testing.assert_array_equal(brick[i], render_scene(scene, p.image_size))
    caps: dict[int, list[str]] = {}
    ids = set()
    for split in ("train2017", "val2017"):
        doc = json.loads((root / NSD / "annotations" / f"captions_{split}.json").read_text())
        assert {"info", "licenses", "images", "annotations"} <= set(doc)
        split_ids = set(info.loc[info["cocoSplit"] == split, "cocoId"])
        assert {im["id"] for im in doc["images"]} == split_ids
        ids |= split_ids
        for a in doc["annotations"]:
            caps.setdefault(a["image_id"], []).append(a["caption"])
    assert ids == set(info["cocoId"])
    for nsd_id in (0, 7, p.n_stimuli - 1):
        coco = int(info.loc[nsd_id, "cocoId"])
        assert caps[coco] == truth[nsd_id]["captions"] and len(caps[coco]) == 5


def test_betas_and_rois_load_like_nsd(micro):
    import nibabel as nib
    from scipy.io import loadmat

    root, _ = micro
    p = get_preset("micro")
    gen = nib.load(root / ROI.format(1, "nsdgeneral"))
    labels = np.asarray(gen.dataobj)
    assert labels.dtype == np.int16 and set(np.unique(labels)) == {-1, 0, 1}
    pattern = loadmat(root / EXPDESIGN)["stimpattern"]
    for s in range(1, p.n_sessions + 1):
        img = nib.load(root / BETAS.format(1, s))
        assert img.get_data_dtype() == np.int16
        assert img.shape == gen.shape + (int(pattern[s - 1].sum()),)
        np.testing.assert_allclose(img.affine, gen.affine)
    assert not (root / BETAS.format(1, p.n_sessions + 1)).exists()
    data = np.asarray(nib.load(root / BETAS.format(2, 1)).dataobj)
    assert np.all(data[labels == -1] == 0)  # nothing outside the brain
    inside = data[labels == 1]
    # percent signal change x 300: a few hundred to a few thousand
    assert 100 < inside.std() < 3000
    for name, labs in ROI_LABELS.items():
        vol = np.asarray(nib.load(root / ROI.format(2, name)).dataobj)
        assert set(np.unique(vol)) <= {-1, 0, *labs}


def _zscored_repeats(root: Path, subject: int, roi: str):
    """Repeats (n_images, 3, n_vox) of z-scored betas, computed from the files independently."""
    import nibabel as nib
    from scipy.io import loadmat

    mat = loadmat(root / EXPDESIGN)
    mo = mat["masterordering"].ravel().astype(int)
    n_shared = mat["sharedix"].size
    pattern = mat["stimpattern"]
    mask = np.asarray(nib.load(root / ROI.format(subject, "nsdgeneral")).dataobj) == 1
    if roi != "nsdgeneral":
        fname, labs = roi
        mask &= np.isin(np.asarray(nib.load(root / ROI.format(subject, fname)).dataobj), labs)
    rows, start = [], 0
    for s in range(pattern.shape[0]):
        n = int(pattern[s].sum())
        b = np.asarray(nib.load(root / BETAS.format(subject, s + 1)).dataobj)[mask].T / 300
        tr = mo[start:start + n] > n_shared
        rows.append((b - b[tr].mean(0)) / b[tr].std(0))
        start += n
    z = np.concatenate(rows)
    order = np.argsort(mo, kind="stable")
    return z[order].reshape(mo.max(), 3, -1), mo


def test_reliability_is_nsd_like(micro):
    root, _ = micro
    reps, _ = _zscored_repeats(root, 1, "nsdgeneral")
    # independent estimate: mean pairwise correlation of single repeats -> Spearman-Brown
    r_pairs = []
    for a, b in ((0, 1), (0, 2), (1, 2)):
        x, y = reps[:, a] - reps[:, a].mean(0), reps[:, b] - reps[:, b].mean(0)
        r_pairs.append((x * y).sum(0) / np.sqrt((x**2).sum(0) * (y**2).sum(0)))
    r1 = np.median(np.mean(r_pairs, 0))
    from lib.scoring import noise_ceiling

    split = np.median(noise_ceiling(reps, n_average=3))
    assert 0.2 <= split <= 0.7, split
    assert 0.05 < r1 < split  # a single repeat is less reliable than an average
    stored = json.loads((root / "truth" / "subj01" / "reliability.json").read_text())
    assert stored["nsdgeneral"]["median"] == pytest.approx(split, abs=0.02)


def test_face_voxels_prefer_faces_and_sessions_differ(micro):
    import nibabel as nib

    root, _ = micro
    truth = json.loads((root / "truth" / "scenes.json").read_text())
    from scipy.io import loadmat

    subjectim = loadmat(root / EXPDESIGN)["subjectim"][0].astype(int) - 1
    has_face = np.array([truth[i]["has_face"] for i in subjectim])
    reps, _ = _zscored_repeats(root, 1, ("floc-faces", (1, 2, 3)))
    resp = reps.mean(1).mean(1)  # per image, averaged over repeats and face voxels
    assert resp[has_face].mean() - resp[~has_face].mean() > 0.3
    # session offsets: raw betas of the same voxels differ in mean between sessions
    mask = np.asarray(nib.load(root / ROI.format(1, "nsdgeneral")).dataobj) == 1
    m1 = np.asarray(nib.load(root / BETAS.format(1, 1)).dataobj)[mask].mean(1)
    m2 = np.asarray(nib.load(root / BETAS.format(1, 2)).dataobj)[mask].mean(1)
    assert np.abs(m1 - m2).mean() > 100  # > 1/3 % signal change on average


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def test_world_is_bit_for_bit_deterministic(tmp_path):
    build_world(TINY.check(), 5, tmp_path / "a")
    build_world(TINY, 5, tmp_path / "b")
    ha, hb = _tree_hashes(tmp_path / "a"), _tree_hashes(tmp_path / "b")
    assert len(ha) > 20 and ha == hb
    build_world(TINY, 6, tmp_path / "c")
    hc = _tree_hashes(tmp_path / "c")
    assert hc[BRICK] != ha[BRICK]


def test_presets_add_up():
    for name in PRESETS:
        p = get_preset(name)
        assert p.n_sessions * p.trials_per_session == p.n_images * p.n_repeats
    toy = get_preset("toy")
    assert 1000 <= toy.n_images <= 1500 and toy.n_shared == 100 and toy.trials_per_session == 750
    with pytest.raises(ValueError, match="unknown toy-world preset"):
        get_preset("huge")


# --------------------------------------------------------------------------- calibration, null
def test_noise_level_follows_the_published_nsd_ceiling(micro):
    """The one calibration: nsdgeneral's measured noise ceiling is NSD's published one."""
    from lib.toyworld import explore

    root, _ = micro
    published = brain.NSD_NOISE_CEILING
    assert published["percent"] == pytest.approx(np.mean(published["percent_per_subject"]),
                                                 abs=0.01)
    assert brain.target_snr() == pytest.approx(0.362 / (3 * 0.638), rel=1e-3)
    table = explore.noise_ceiling_table(root, [1, 2], n_average=published["n_average"])
    for subject, value in table.loc["nsdgeneral"].items():
        assert value == pytest.approx(published["percent"], abs=4.0), subject
    # early visual cortex is more reliable than the nsdgeneral median, as in NSD's maps
    assert (table.loc["V1"] > table.loc["nsdgeneral"]).all()


@pytest.fixture(scope="module")
def micro_null(micro_null_root):
    """The session's null micro world (``data/micro_null``, tests/conftest.py)."""
    return micro_null_root


def test_null_world_changes_only_the_link_between_image_and_response(micro, micro_null):
    import h5py
    import nibabel as nib

    from lib.toyworld import explore

    root, _ = micro
    normal, null = _tree_hashes(root / NSD), _tree_hashes(micro_null / NSD)
    assert normal.keys() == null.keys()
    betas = {k for k in normal if "betas_session" in k}
    assert betas and all(normal[k] != null[k] for k in betas)
    assert all(normal[k] == null[k] for k in normal.keys() - betas)  # design, stimuli, ROIs
    assert json.loads((micro_null / "truth" / "WORLD.json").read_text())["null"] is True
    assert json.loads((root / "truth" / "WORLD.json").read_text())["null"] is False
    assert json.loads((micro_null / "BUILD.json").read_text())["null"] is True
    with h5py.File(root / "truth" / "subj01" / "tuning.h5") as a, \
            h5py.File(micro_null / "truth" / "subj01" / "tuning.h5") as b:
        for key in ("snr", "noise_sd", "signal", "w_semantic", "session_gain"):
            np.testing.assert_array_equal(a[key][:], b[key][:])
        rows_a, rows_b = a["signal_row"][:], b["signal_row"][:]
    # every image's signal occurs as often as in the normal world, on unrelated trials
    np.testing.assert_array_equal(np.sort(rows_a), np.sort(rows_b))
    assert np.mean(rows_a == rows_b) < 0.05
    # same response statistics, no stimulus information
    general = explore.roi_mask(root, 1, "nsdgeneral", (1,))
    raw_a = np.asarray(nib.load(root / BETAS.format(1, 1)).dataobj)[general]
    raw_b = np.asarray(nib.load(micro_null / BETAS.format(1, 1)).dataobj)[general]
    assert raw_b.std() == pytest.approx(raw_a.std(), rel=0.05)
    table = explore.noise_ceiling_table(micro_null, [1, 2])
    assert (table.loc["nsdgeneral"] < 2.0).all(), table


def test_null_build_links_the_normal_worlds_models(micro_root, micro_null_root):
    """A null world reuses the normal world's models (hard links), it does not retrain them."""
    import os

    out = micro_null_root
    stamp = json.loads((out / "MODELS.json").read_text())
    assert stamp["linked_from"] == str(micro_root.resolve())
    src = sorted(p for p in (micro_root / "models").rglob("*") if p.is_file())
    dst = sorted(p for p in (out / "models").rglob("*") if p.is_file())
    assert [p.relative_to(micro_root / "models") for p in src] == \
        [p.relative_to(out / "models") for p in dst]
    assert os.stat(src[0]).st_ino == os.stat(dst[0]).st_ino


# --------------------------------------------------------------------------- timing
def _busy(seconds: float) -> None:
    t = time.process_time()
    while time.process_time() - t < seconds:
        sum(range(1000))


def test_phase_times_record_wall_and_cpu(capsys):
    from lib.toyworld.timing import PhaseTimes

    phases = PhaseTimes(prefix="[t]")
    with phases.phase("busy"):
        _busy(0.05)
    with phases.phase("busy"):  # a repeated name adds up
        _busy(0.05)
    time.sleep(0.05)  # waiting costs wall time, not CPU time
    phases.lap("since start")
    busy, lap = phases.phases["busy"], phases.phases["since start"]
    assert busy["cpu_s"] >= 0.1 and busy["wall_s"] > 0
    # the lap spans both busy blocks and the sleep: clocks only move forward. Times are
    # recorded in whole milliseconds (busy is the sum of two rounded blocks), so compare
    # milliseconds, allowing the 2 ms that rounding can take off
    ms = {k: {c: round(v[c] * 1000) for c in v} for k, v in (("busy", busy), ("lap", lap))}
    assert ms["lap"]["wall_s"] >= ms["busy"]["wall_s"] + 50 - 2
    assert ms["lap"]["cpu_s"] >= ms["busy"]["cpu_s"] - 2
    assert capsys.readouterr().out.count("[t] busy:") == 2


def test_build_records_wall_and_cpu_per_world_step(micro):
    import torch

    from bench.bench_book import build_rows, table

    root, _ = micro
    steps = json.loads((root / "BUILD.json").read_text())["world_timings"]
    assert {"stimuli", "grid_and_features", "subj01_betas", "subj02_truth"} <= set(steps)
    assert all(set(v) == {"wall_s", "cpu_s"} and v["cpu_s"] > 0 for v in steps.values())
    rows = build_rows(root)
    world_rows = [r["phase"] for r in rows if r["phase"].startswith("  world: ")]
    assert world_rows == [f"  world: {k}" for k in steps]
    assert table(rows).count("\n") == len(rows) + 1
    machine = json.loads((root / "BUILD.json").read_text())["machine"]  # what bits depend on
    assert machine["torch"] == torch.__version__ and machine["numpy"] == np.__version__
    assert machine["cpu_capability"] and {"vendor", "model_name", "isa"} <= set(machine)


def test_bench_book_compares_two_builds_science_side_by_side(micro):
    import torch

    from bench.bench_book import compare, science

    root, _ = micro
    world = json.loads((root / "truth" / "WORLD.json").read_text())
    values = science(root)  # the noise ceilings, and the models' quality
    ceiling = {s: world["subjects"][s]["nsdgeneral"] for s in ("subj01", "subj02")}
    expected = {f"noise ceiling {s} nsdgeneral {stat}": ceiling[s][stat]
                for s in ceiling for stat in ("median", "mean")}
    assert {k: values.get(k) for k in expected} == expected
    lines = compare(root, root).splitlines()
    torch_row = next(x for x in lines if x.startswith("| machine: torch |"))
    assert torch_row.count(torch.__version__) == 2
    line = next(x for x in lines if "subj01 nsdgeneral median" in x)
    a, b = line.strip("|").split("|")[1:]
    assert a == b and float(a) == pytest.approx(values["noise ceiling subj01 nsdgeneral median"],
                                                abs=1e-4)


def test_bench_book_times_a_subprocess_wall_and_cpu():
    import sys

    from bench.bench_book import run_timed

    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    times, out = run_timed([sys.executable, "-c", busy + "\nprint('ok')"])
    assert out.strip() == "ok"
    assert 0.25 < times["cpu_s"] <= times["wall_s"] + 0.1
    with pytest.raises(RuntimeError, match="failed"):
        run_timed([sys.executable, "-c", "raise SystemExit(3)"])


def test_bench_book_reads_each_jobs_time_from_lib_run():
    from bench.bench_book import _job_rows

    out = ("preflight: everything the run needs is there\n"
           "[1/3] 00_toy_world done in 41.3 s -> book/run/00_toy_world.ipynb\n"
           "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.\n"
           "[2/3] 03_alignment_ridge (subj01, memory_size=3) done in 38.1 s -> x.ipynb\n"
           "[3/3] 02_convergence (subj02) failed: cell 12\n")
    assert _job_rows(out) == [
        {"phase": "  00_toy_world", "wall_s": 41.3, "cpu_s": None},
        {"phase": "  03_alignment_ridge (subj01, memory_size=3)", "wall_s": 38.1, "cpu_s": None}]


def test_world_takes_more_subjects(tmp_path):
    """``--subjects N``: every subject gets NSD's files, its own images besides the shared ones."""
    from scipy.io import loadmat

    from lib.nsd.layout import NSDLayout

    out = build(preset="micro", seed=0, out=tmp_path / "three", models=False, n_subjects=3)
    layout = NSDLayout(out / "nsd")
    design = loadmat(layout.expdesign)
    subjectim, shared = design["subjectim"], design["sharedix"].ravel()
    assert subjectim.shape[0] == 3
    for k in range(3):
        assert layout.betas(k + 1, 1).exists() and layout.roi(k + 1, "nsdgeneral").exists()
        assert set(shared) <= set(subjectim[k])
    own = [set(subjectim[k]) - set(shared) for k in range(3)]
    assert not (own[0] & own[1]) and not (own[1] & own[2])
    with pytest.raises(ValueError, match="at least 1"):
        build(preset="micro", out=tmp_path / "none", models=False, n_subjects=0)


def test_build_stamp_ignores_layout_comments_and_docstrings_but_not_code():
    from lib.toyworld.build import _code_fingerprint

    base = 'def f(x):\n    """Twice x."""\n    return 2 * x  # double\n'
    relaid = 'def f(\n    x,\n):\n    """Twice x, re-worded."""\n    return (2\n            * x)\n'
    changed = 'def f(x):\n    """Twice x."""\n    return 3 * x\n'
    assert _code_fingerprint(base) == _code_fingerprint(relaid)
    assert _code_fingerprint(base) != _code_fingerprint(changed)
