"""lib.nsd: preparation and reader, checked on an NSD-format miniature built here.

Every field of prepared.h5 is compared against a separate, deliberately plain computation
(loops over the design, the stimulus table's subjectK_repR columns, nibabel's full reads).
"""

from __future__ import annotations

import gzip
import json

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.io import savemat

from lib.nsd import (
    NSDCorruptFileError,
    NSDGridMismatchError,
    NSDMissingFileError,
    PreparedSubject,
    plan_subject,
    prepare_subject,
    write_prepared,
    zscore_session,
)
from lib.nsd.layout import NSDLayout

GRID = (5, 6, 4)
AFFINE = np.array([[1.8, 0, 0, -4.0], [0, 1.8, 0, -5.0], [0, 0, 1.8, -3.0], [0, 0, 0, 1]])
N_73K = 40
N_SHARED = 4
N_PER_SUBJECT = 12
# sessions x runs x slots; blanks (0) between trials; session 2 has one trial fewer
STIMPATTERN = np.array(
    [
        [[1, 1, 0, 1, 1, 1, 0, 1], [0, 1, 1, 1, 0, 1, 0, 0]],
        [[1, 0, 1, 1, 1, 0, 1, 0], [1, 1, 0, 1, 0, 1, 0, 0]],
        [[1, 1, 1, 0, 1, 1, 0, 1], [1, 0, 1, 1, 0, 1, 0, 0]],
        [[1, 1, 0, 1, 1, 1, 0, 1], [1, 1, 0, 0, 1, 1, 0, 0]],
    ]
)
PRESENT = (1, 2, 4)  # session 3 withheld, as NSD withholds sessions


def _write_nii(path, data, dtype):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), AFFINE)
    img.header.set_data_dtype(dtype)
    nib.save(img, path)


def build_miniature(root, seed=0, coco=True, sessions=PRESENT):
    """Write a tiny NSD root (two subjects, subject 1 with betas) and return facts about it."""
    rng = np.random.default_rng(seed)
    n_trials = int(STIMPATTERN.sum())
    # image lists: 4 shared images first, then each subject's own
    ids = rng.permutation(N_73K)
    shared = ids[:N_SHARED]
    subj1 = np.concatenate([shared, ids[N_SHARED:N_PER_SUBJECT]])
    subj2 = np.concatenate([shared, ids[N_PER_SUBJECT : 2 * N_PER_SUBJECT - N_SHARED]])
    subjectim = np.stack([subj1, subj2]) + 1  # 1-based 73k ids
    # each of the 12 images up to 4 times, in random order
    masterordering = np.concatenate([np.arange(1, N_PER_SUBJECT + 1)] * 4)
    masterordering = rng.permutation(masterordering)[:n_trials]
    nsd = root / "nsddata" / "experiments" / "nsd"
    nsd.mkdir(parents=True)
    savemat(
        nsd / "nsd_expdesign.mat",
        {
            "masterordering": masterordering[None, :].astype(np.float64),
            "subjectim": subjectim.astype(np.float64),
            "sharedix": np.sort(shared + 1)[None, :].astype(np.float64),
            "stimpattern": STIMPATTERN.astype(np.float64),
        },
    )
    # the stimulus table, written from a trial list (1-based trial numbers per repetition)
    table = pd.DataFrame(
        {
            "nsdId": np.arange(N_73K),
            "cocoId": 500000 + 7 * np.arange(N_73K),
            "cocoSplit": np.where(np.arange(N_73K) % 3 == 0, "val2017", "train2017"),
            "shared1000": np.isin(np.arange(N_73K), shared),
        }
    )
    for k, row in enumerate(subjectim, start=1):
        table[f"subject{k}"] = np.isin(np.arange(N_73K), row - 1).astype(int)
        for r in range(4):
            table[f"subject{k}_rep{r}"] = 0
        for nsd_id in row - 1:
            position = int(np.flatnonzero(row - 1 == nsd_id)[0]) + 1
            shown = np.flatnonzero(masterordering == position) + 1
            for r, t in enumerate(shown):
                table.loc[nsd_id, f"subject{k}_rep{r}"] = t
    table.to_csv(nsd / "nsd_stim_info_merged.csv")
    # stimuli: pixel values encode the id
    stim = root / "nsddata_stimuli" / "stimuli" / "nsd"
    stim.mkdir(parents=True)
    brick = (np.arange(N_73K)[:, None, None, None] * 5 + rng.integers(0, 5, (N_73K, 6, 6, 3)))
    with h5py.File(stim / "nsd_stimuli.hdf5", "w") as h5:
        h5["imgBrick"] = brick.astype(np.uint8)
    # ROIs
    roi_dir = root / "nsddata" / "ppdata" / "subj01" / "func1pt8mm" / "roi"
    general = rng.choice([-1, 0, 1], size=GRID, p=[0.2, 0.3, 0.5])
    visual = rng.integers(0, 8, GRID) * (general >= 0)
    faces = rng.choice([0, 0, 0, 1, 2, 3, 4, 5], size=GRID)
    _write_nii(roi_dir / "nsdgeneral.nii.gz", general, np.int16)
    _write_nii(roi_dir / "prf-visualrois.nii.gz", visual, np.int16)
    _write_nii(roi_dir / "floc-faces.nii.gz", faces, np.int16)
    # betas: int16 (pct signal change x 300), session-specific offset and scale per voxel
    betas_dir = (root / "nsddata_betas" / "ppdata" / "subj01" / "func1pt8mm"
                 / "betas_fithrf_GLMdenoise_RR")
    counts = STIMPATTERN.reshape(len(STIMPATTERN), -1).sum(1)
    for s in sessions:
        offset = rng.normal(0, 400, GRID)[..., None]
        scale = rng.uniform(100, 900, GRID)[..., None]
        data = np.rint(offset + scale * rng.standard_normal(GRID + (counts[s - 1],)))
        _write_nii(betas_dir / f"betas_session{s:02d}.nii.gz", data, np.int16)
    # COCO captions: two per image, one image left without any
    if coco:
        ann_dir = root / "annotations"
        ann_dir.mkdir()
        for split in ("train2017", "val2017"):
            anns = []
            for nsd_id in range(1, N_73K):  # nsd id 0 has no caption
                if table.loc[nsd_id, "cocoSplit"] != split:
                    continue
                coco_id = int(table.loc[nsd_id, "cocoId"])
                for c in range(2):
                    anns.append({"image_id": coco_id, "id": len(anns),
                                 "caption": f"image {nsd_id} caption {c} "})
            (ann_dir / f"captions_{split}.json").write_text(
                json.dumps({"images": [], "annotations": anns})
            )
    return {"table": table, "betas_dir": betas_dir, "roi_dir": roi_dir, "brick": brick}


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsd")
    facts = build_miniature(root)
    out = tmp_path_factory.mktemp("derived")
    path = prepare_subject(root, 1, out, progress=False)
    return root, facts, out, path


# --- an independent, plain computation of what prepared.h5 must hold ----------------------
def _expected(root, facts, zscore="session"):
    table = facts["table"]
    trial_to_id = {}
    for nsd_id, row in table.iterrows():
        for r in range(4):
            t = int(row[f"subject1_rep{r}"])
            if t:
                trial_to_id[t - 1] = nsd_id
    trials, sessions, runs = [], [], []
    t = 0
    for s in range(1, len(STIMPATTERN) + 1):
        for r in range(STIMPATTERN.shape[1]):
            for slot in range(STIMPATTERN.shape[2]):
                if STIMPATTERN[s - 1, r, slot]:
                    if s in PRESENT:
                        trials.append(t)
                        sessions.append(s)
                        runs.append(r + 1)
                    t += 1
    nsd_ids = [trial_to_id[t] for t in trials]
    is_test = [bool(table.loc[i, "shared1000"]) for i in nsd_ids]
    general = nib.load(facts["roi_dir"] / "nsdgeneral.nii.gz").get_fdata()
    ijk = [(i, j, k) for i in range(GRID[0]) for j in range(GRID[1]) for k in range(GRID[2])
           if general[i, j, k] == 1]
    blocks = []
    for s in PRESENT:
        vol = nib.load(facts["betas_dir"] / f"betas_session{s:02d}.nii.gz").get_fdata()
        x = np.array([[vol[i, j, k, n] for (i, j, k) in ijk] for n in range(vol.shape[3])]) / 300
        blocks.append(x)
    raw = np.concatenate(blocks)
    is_test_a = np.array(is_test)
    sess = np.array(sessions)
    if zscore == "session":
        z = np.empty_like(raw)
        for s in PRESENT:
            rows = sess == s
            train = raw[rows & ~is_test_a]
            z[rows] = (raw[rows] - train.mean(0)) / train.std(0)
    elif zscore == "global":
        train = raw[~is_test_a]
        z = (raw - train.mean(0)) / train.std(0)
    else:
        z = raw
    return {"trial": np.array(trials), "session": sess, "run": np.array(runs),
                "nsd_id": np.array(nsd_ids), "is_test": is_test_a, "ijk": np.array(ijk), "betas": z}


def test_prepared_fields_match_independent_computation(mini):
    root, facts, out, path = mini
    assert path == out / "subj01" / "prepared.h5"
    exp = _expected(root, facts)
    with h5py.File(path, "r") as h5:
        np.testing.assert_array_equal(h5["trial"][:], exp["trial"])
        np.testing.assert_array_equal(h5["session"][:], exp["session"])
        np.testing.assert_array_equal(h5["run"][:], exp["run"])
        np.testing.assert_array_equal(h5["nsd_id"][:], exp["nsd_id"])
        np.testing.assert_array_equal(h5["is_test"][:], exp["is_test"])
        np.testing.assert_array_equal(h5["voxel_ijk"][:], exp["ijk"])
        np.testing.assert_allclose(h5["betas"][:], exp["betas"], rtol=1e-4, atol=1e-4)
        assert h5["betas"].dtype == np.float32
        for name in ("nsdgeneral", "prf-visualrois", "floc-faces"):
            vol = nib.load(facts["roi_dir"] / f"{name}.nii.gz").get_fdata()
            np.testing.assert_array_equal(h5["roi"][name][:], [vol[tuple(v)] for v in exp["ijk"]])
        assert set(h5["roi"]) == {"nsdgeneral", "prf-visualrois", "floc-faces"}
        np.testing.assert_allclose(h5.attrs["affine"], AFFINE)
        assert tuple(h5.attrs["grid_shape"]) == GRID
        assert h5.attrs["zscore"] == "session"
        assert list(h5.attrs["sessions"]) == list(PRESENT)
        assert list(h5.attrs["sessions_not_used"]) == [3]
        assert h5.attrs["nsd_root"] == str(root)
        assert h5.attrs["captions"] == "present"
    # test trials exist in every session, and the test mean was not used for the statistics
    assert exp["is_test"].any() and (~exp["is_test"]).any()


def test_zscore_uses_training_trials_only(mini):
    root, facts, _out, path = mini
    exp = _expected(root, facts)
    with h5py.File(path, "r") as h5:
        z = h5["betas"][:]
    for s in PRESENT:
        train = (exp["session"] == s) & ~exp["is_test"]
        test = (exp["session"] == s) & exp["is_test"]
        np.testing.assert_allclose(z[train].mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(z[train].std(0), 1, atol=1e-4)
        # including the test trials would have given a different answer
        assert np.abs(z[train | test].mean(0)).max() > 1e-3


def test_zscore_session_ignores_test_trials():
    rng = np.random.default_rng(0)
    betas = (rng.normal(size=(40, 7)) * 3 + 5).astype(np.float32)
    is_test = np.arange(40) % 5 == 0
    z, mean, std = zscore_session(betas, is_test)
    assert z is not betas and mean.shape == std.shape == (7,)
    np.testing.assert_allclose(z[~is_test].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z[~is_test].std(0), 1, atol=1e-5)
    # the test trials are transformed with the same statistics but never change them
    shifted = betas.copy()
    shifted[is_test] += 100.0
    z2, mean2, std2 = zscore_session(shifted, is_test, inplace=True)
    assert z2 is shifted
    np.testing.assert_array_equal(mean2, mean)
    np.testing.assert_array_equal(z2[~is_test], z[~is_test])
    assert (z2[is_test] > z[is_test]).all()


def test_steps_give_prepare_subject(mini, tmp_path):
    root, _facts, _out, path = mini
    plan = plan_subject(root, 1)
    assert plan.trial.size == plan.is_test.size and plan.n_voxels == plan.ijk.shape[0]
    again = write_prepared(plan, tmp_path, progress=False)
    with h5py.File(path, "r") as a, h5py.File(again, "r") as b:
        np.testing.assert_array_equal(a["betas"][:], b["betas"][:])
        np.testing.assert_array_equal(a["zscore_stats/std"][:], b["zscore_stats/std"][:])


@pytest.mark.parametrize("mode", ["global", "none"])
def test_other_zscore_modes(mini, tmp_path, mode):
    root, facts, _, _ = mini
    path = prepare_subject(root, "subj01", tmp_path, zscore=mode, progress=False)
    exp = _expected(root, facts, zscore=mode)
    with h5py.File(path, "r") as h5:
        np.testing.assert_allclose(h5["betas"][:], exp["betas"], rtol=1e-4, atol=1e-4)
        assert h5.attrs["zscore"] == mode


def test_float16_and_session_subset(mini, tmp_path):
    root, facts, _, _ = mini
    path = prepare_subject(root, 1, tmp_path, sessions=[2], dtype="float16", progress=False)
    exp = _expected(root, facts)
    with h5py.File(path, "r") as h5:
        assert h5["betas"].dtype == np.float16
        rows = exp["session"] == 2
        np.testing.assert_array_equal(h5["trial"][:], exp["trial"][rows])
        np.testing.assert_allclose(h5["betas"][:], exp["betas"][rows], atol=2e-2)
        assert list(h5.attrs["sessions"]) == [2]


def test_captions_json(mini):
    _root, facts, out, _ = mini
    captions = json.loads((out / "subj01" / "captions.json").read_text())
    table = facts["table"]
    subject_ids = set(np.flatnonzero(table["subject1"].to_numpy()))
    assert set(map(int, captions)) == subject_ids
    for key, caps in captions.items():
        nsd_id = int(key)
        if nsd_id == 0:
            assert caps == []
        else:
            assert caps == [f"image {nsd_id} caption {c}" for c in range(2)]


# --- bad inputs ------------------------------------------------------------------------------
@pytest.fixture()
def fresh(tmp_path):
    root = tmp_path / "nsd"
    facts = build_miniature(root, seed=1)
    return root, facts, tmp_path / "out"


@pytest.mark.parametrize(
    "relpath, word",
    [
        ("nsddata/experiments/nsd/nsd_expdesign.mat", "design"),
        ("nsddata/experiments/nsd/nsd_stim_info_merged.csv", "stim"),
        ("nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz", "nsdgeneral"),
    ],
)
def test_missing_file_errors(fresh, relpath, word):
    root, _, out = fresh
    (root / relpath).unlink()
    with pytest.raises(NSDMissingFileError, match=word) as info:
        prepare_subject(root, 1, out, progress=False)
    assert relpath.split("/")[-1] in str(info.value)
    assert "download" in str(info.value).lower()
    assert not (out / "subj01" / "prepared.h5").exists()


def test_subject_without_betas(fresh):
    root, _, out = fresh
    with pytest.raises(NSDMissingFileError, match="No betas for subj02") as info:
        prepare_subject(root, 2, out, progress=False)
    assert "lib.nsd download --subject 2" in str(info.value)


def test_requested_session_absent(fresh):
    root, _, out = fresh
    with pytest.raises(NSDMissingFileError, match=r"session\(s\) \[3\]"):
        prepare_subject(root, 1, out, sessions=[1, 3], progress=False)


def test_roi_grid_mismatch(fresh):
    root, facts, out = fresh
    _write_nii(facts["roi_dir"] / "prf-visualrois.nii.gz", np.zeros((5, 6, 5)), np.int16)
    with pytest.raises(NSDGridMismatchError, match="prf-visualrois") as info:
        prepare_subject(root, 1, out, progress=False)
    assert "(5, 6, 4)" in str(info.value) and "(5, 6, 5)" in str(info.value)


def test_truncated_session_file(fresh):
    root, facts, out = fresh
    path = facts["betas_dir"] / "betas_session02.nii.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(NSDCorruptFileError, match="betas_session02") as info:
        prepare_subject(root, 1, out, progress=False)
    assert "download it again" in str(info.value)
    assert not (out / "subj01" / "prepared.h5").exists()


def test_garbage_session_file(fresh):
    root, facts, out = fresh
    path = facts["betas_dir"] / "betas_session04.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti file" * 10))
    with pytest.raises(NSDCorruptFileError, match="betas_session04"):
        prepare_subject(root, 1, out, progress=False)


def test_session_with_wrong_trial_count(fresh):
    root, facts, out = fresh
    _write_nii(facts["betas_dir"] / "betas_session01.nii.gz", np.zeros(GRID + (3,)), np.int16)
    with pytest.raises(NSDGridMismatchError, match="stimpattern"):
        prepare_subject(root, 1, out, progress=False)


def test_missing_coco_is_an_error_and_writes_nothing(tmp_path):
    root = tmp_path / "nsd"
    build_miniature(root, seed=2, coco=False)
    out = tmp_path / "out"
    with pytest.raises(NSDMissingFileError) as err:
        prepare_subject(root, 1, out, progress=False)
    message = str(err.value)
    assert "captions_train2017.json" in message and "captions_val2017.json" in message
    assert f"python -m lib.nsd download --coco-only --dest {root}" in message
    assert not out.exists()  # no partial output
    # one of the two files is not enough either (NSD's images come from both splits)
    (root / "annotations").mkdir()
    (root / "annotations" / "captions_train2017.json").write_text('{"annotations": []}')
    with pytest.raises(NSDMissingFileError, match="captions_val2017.json"):
        prepare_subject(root, 1, out, progress=False)
    assert not out.exists()


def test_bad_parameters(fresh):
    root, _, out = fresh
    with pytest.raises(ValueError, match="zscore"):
        prepare_subject(root, 1, out, zscore="run")
    with pytest.raises(ValueError, match="dtype"):
        prepare_subject(root, 1, out, dtype="int8")


# --- reader ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reader(mini):
    root, facts, out, _path = mini
    return PreparedSubject.open(out.parent, out.name, 1), _expected(root, facts), facts


def test_reader_basics(reader, mini):
    subj, exp, _ = reader
    assert subj.n_voxels == len(exp["ijk"])
    assert subj.grid_shape == GRID
    assert subj.sessions == list(PRESENT)
    assert subj.nsd_root == mini[0]
    np.testing.assert_array_equal(subj.voxel_ijk, exp["ijk"])
    for split, flag in (("train", False), ("test", True)):
        np.testing.assert_array_equal(
            subj.image_ids(split), np.unique(exp["nsd_id"][exp["is_test"] == flag])
        )
    with pytest.raises(ValueError, match="split"):
        subj.image_ids("val")


def test_trials_and_averages(reader):
    subj, exp, _ = reader
    for split, flag in (("train", False), ("test", True)):
        rows = exp["is_test"] == flag
        x, ids = subj.trials(split)
        np.testing.assert_allclose(x, exp["betas"][rows], atol=1e-4)
        np.testing.assert_array_equal(ids, exp["nsd_id"][rows])
        avg, uniq = subj.averaged_betas(split)
        frame = pd.DataFrame(exp["betas"][rows]).groupby(exp["nsd_id"][rows]).mean()
        np.testing.assert_array_equal(uniq, frame.index.to_numpy())
        np.testing.assert_allclose(avg, frame.to_numpy(), atol=1e-4)
        mask = subj.roi_mask("V1")
        avg_v1, _ = subj.averaged_betas(split, roi="V1")
        np.testing.assert_allclose(avg_v1, frame.to_numpy()[:, mask], atol=1e-4)


def test_repeats(reader):
    subj, exp, _ = reader
    rows = exp["is_test"]
    reps = subj.repeats("test")
    ids = subj.image_ids("test")
    counts = subj.repeat_counts("test")
    assert reps.shape == (ids.size, counts.max(), subj.n_voxels)
    for n, nsd_id in enumerate(ids):
        mine = exp["betas"][rows & (exp["nsd_id"] == nsd_id)]
        np.testing.assert_allclose(reps[n, : len(mine)], mine, atol=1e-4)
        assert np.isnan(reps[n, len(mine):]).all()
    avg, _ = subj.averaged_betas("test")
    np.testing.assert_allclose(np.nanmean(reps, axis=1), avg, atol=1e-4)


@pytest.mark.parametrize("direction", ["past", "future", "both"])
def test_memory_windows(reader, direction):
    subj, exp, _ = reader
    size = 3
    offsets = {"past": [0, -1, -2], "future": [0, 1, 2], "both": [0, -1, 1]}[direction]
    for split, flag in (("train", False), ("test", True)):
        blocks, ids = subj.memory_windows(split, size, direction=direction)
        assert len(blocks) == size
        rows = np.flatnonzero(exp["is_test"] == flag)
        np.testing.assert_array_equal(ids, exp["nsd_id"][rows])
        for b, off in enumerate(offsets):
            for n, p in enumerate(rows):
                # the neighbour: the trial `off` steps away within the same session and run
                want = np.zeros(subj.n_voxels)
                for q in range(len(exp["trial"])):
                    same_run = ((exp["session"][q], exp["run"][q])
                                == (exp["session"][p], exp["run"][p]))
                    hidden = split == "train" and exp["is_test"][q]  # test data never in training
                    if same_run and exp["trial"][q] == exp["trial"][p] + off and not hidden:
                        want = exp["betas"][q]
                np.testing.assert_allclose(blocks[b][n], want, atol=1e-4)
    # run edges are zero-padded: the first trial of every run has no past
    blocks, _ = subj.memory_windows("test", 2, "past", zero_test_neighbours=False)
    first = np.flatnonzero(np.r_[True, np.diff(exp["run"]) != 0][exp["is_test"]])
    assert first.size and np.all(blocks[1][first] == 0)
    with pytest.raises(ValueError, match="direction"):
        subj.memory_windows("train", 2, direction="sideways")


def test_roi_masks(reader, mini):
    subj, exp, facts = reader
    vis = nib.load(facts["roi_dir"] / "prf-visualrois.nii.gz").get_fdata()
    faces = nib.load(facts["roi_dir"] / "floc-faces.nii.gz").get_fdata()
    v = np.array([vis[tuple(i)] for i in exp["ijk"]])
    f = np.array([faces[tuple(i)] for i in exp["ijk"]])
    np.testing.assert_array_equal(subj.roi_mask("V1"), (v == 1) | (v == 2))
    np.testing.assert_array_equal(subj.roi_mask("V3"), (v == 5) | (v == 6))
    np.testing.assert_array_equal(subj.roi_mask("hV4"), v == 7)
    np.testing.assert_array_equal(subj.roi_mask("faces"), f > 0)
    np.testing.assert_array_equal(subj.roi_mask("FFA-1"), f == 2)
    np.testing.assert_array_equal(subj.roi_mask("V2d"), v == 4)
    assert subj.roi_mask("nsdgeneral").all()
    names = subj.roi_names()
    assert {"nsdgeneral", "V1", "V2", "V3", "hV4", "faces", "FFA-1", "OFA"} <= set(names)
    assert "bodies" not in names
    with pytest.raises(KeyError, match="floc-bodies"):
        subj.roi_mask("EBA")
    with pytest.raises(KeyError, match="Unknown ROI"):
        subj.roi_mask("V9")


def test_captions_and_images(reader):
    subj, exp, facts = reader
    ids = [int(exp["nsd_id"][3]), 0, int(exp["nsd_id"][0]), int(exp["nsd_id"][3])]
    caps = subj.captions(ids)
    assert caps[0] == [f"image {ids[0]} caption {c}" for c in range(2)] or ids[0] == 0
    imgs = subj.images(ids)
    assert imgs.dtype == np.uint8 and imgs.shape == (4, 6, 6, 3)
    np.testing.assert_array_equal(imgs, facts["brick"][ids])
    with pytest.raises(ValueError, match="nsd ids"):
        subj.images([N_73K + 3])


def test_images_read_only_requested_rows(reader, monkeypatch):
    subj, _exp, _facts = reader
    requested = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        requested.append(key)
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    subj.images([7, 2, 7])
    assert requested == [2, 7]  # each once, one image per read (never the whole brick)


def test_to_volume_roundtrip(reader):
    subj, exp, _ = reader
    values = np.arange(subj.n_voxels, dtype=np.float32) + 1
    img = subj.to_volume(values)
    assert img.shape == GRID
    np.testing.assert_allclose(img.affine, AFFINE)
    data = img.get_fdata()
    np.testing.assert_array_equal(data[tuple(exp["ijk"].T)], values)
    assert data.sum() == values.sum()
    assert subj.to_volume(np.stack([values, values])).shape == GRID + (2,)


# --- summaries for the notebook -------------------------------------------------------------
def test_split_table(reader):
    from lib.nsd import split_table

    subj, exp, _ = reader
    table = split_table([subj]).set_index("split")
    for split, flag in (("train", False), ("test", True)):
        ids = exp["nsd_id"][exp["is_test"] == flag]
        _, counts = np.unique(ids, return_counts=True)
        assert table.loc[split, "trials"] == ids.size
        assert table.loc[split, "images"] == counts.size
        assert table.loc[split, "shown 2x"] == (counts == 2).sum()
        assert table.loc[split, "shown 3x+"] == (counts >= 3).sum()


def test_session_value_table_recovers_raw_betas(reader, mini):
    from lib.nsd import session_value_table

    subj, exp, facts = reader
    table = session_value_table(subj, n_voxels=5, seed=1)
    raw_expected = _expected(mini[0], facts, zscore="none")["betas"]
    assert len(table) == len(exp["trial"]) * 5
    rows = np.repeat(np.arange(len(exp["trial"])), 5)  # trial-major, voxel-minor
    cols = table["voxel"].to_numpy()
    np.testing.assert_allclose(table["raw"], raw_expected[rows, cols], atol=1e-3)
    np.testing.assert_allclose(table["z"], exp["betas"][rows, cols], atol=1e-4)
    np.testing.assert_array_equal(table["session"], exp["session"][rows])


def test_noise_ceiling_of_prepared_repeats(reader):
    from scipy.stats import f_oneway

    from lib.scoring import noise_ceiling_pvalues

    subj, exp, _ = reader
    rows = ~exp["is_test"]
    groups = [exp["betas"][rows & (exp["nsd_id"] == i)] for i in np.unique(exp["nsd_id"][rows])]
    groups = [g for g in groups if len(g) >= 2]
    want = [f_oneway(*[g[:, v] for g in groups]).pvalue for v in range(subj.n_voxels)]
    np.testing.assert_allclose(noise_ceiling_pvalues(subj.repeats("train")), want, rtol=1e-3)


def test_roi_atlas(reader):
    from lib.nsd import roi_atlas

    subj, _, _ = reader
    labels, used = roi_atlas(subj)
    assert used == ["V1", "V2", "V3", "hV4", "faces"]
    np.testing.assert_array_equal(labels == 5, subj.roi_mask("faces"))
    np.testing.assert_array_equal(labels == 1, subj.roi_mask("V1") & ~subj.roi_mask("faces"))


def test_roi_affine_mismatch_warns(fresh):
    root, facts, out = fresh
    vol = nib.load(facts["roi_dir"] / "floc-faces.nii.gz")
    shifted = AFFINE.copy()
    shifted[0, 3] += 5
    nib.save(nib.Nifti1Image(np.asarray(vol.dataobj), shifted),
             facts["roi_dir"] / "floc-faces.nii.gz")
    with pytest.warns(UserWarning, match="floc-faces"):
        path = prepare_subject(root, 1, out, progress=False)
    with h5py.File(path, "r") as h5:
        np.testing.assert_allclose(h5.attrs["affine"], AFFINE)


def test_input_fingerprint_follows_stimuli_and_captions(tmp_path):
    """Feature caches are named by what the models see: new stimuli or captions, new name."""
    import os

    root = tmp_path / "nsd"
    root.mkdir()
    build_miniature(root)
    subj = PreparedSubject(prepare_subject(root, 1, tmp_path / "derived", progress=False))
    vision, language = subj.input_fingerprint("vision"), subj.input_fingerprint("language")
    assert vision.startswith("_") and language.startswith("_") and vision != language
    # re-preparing the same inputs keeps both, so cached features survive
    again = PreparedSubject(prepare_subject(root, 1, tmp_path / "derived", progress=False))
    assert again.input_fingerprint("vision") == vision
    assert again.input_fingerprint("language") == language
    captions = subj.path.parent / "captions.json"
    captions.write_text(captions.read_text().replace("caption 0", "caption zero"))
    assert subj.input_fingerprint("language") != language
    stimuli = NSDLayout(root).stimuli
    os.utime(stimuli, ns=(1, 1))
    assert subj.input_fingerprint("vision") != vision
    with pytest.raises(ValueError, match="modality"):
        subj.input_fingerprint("audio")
