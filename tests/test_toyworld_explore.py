"""lib.toyworld.explore on the micro world: readers agree with lib.nsd and with the truth."""

from __future__ import annotations

import numpy as np

from lib.scoring import noise_ceiling
from lib.toyworld import explore


def test_summary_and_captions(micro_root):
    summary = explore.world_summary(micro_root)
    assert list(summary.index) == [1, 2]
    assert (summary["images"] == 150).all() and (summary["shared (test) images"] == 20).all()
    mask = explore.roi_mask(micro_root, 1, "prf-visualrois", (1, 2))
    assert summary.loc[1, "V1"] == mask.sum()
    scenes = explore.load_scenes(micro_root)
    ids = [0, 5, 17]
    assert explore.captions(micro_root, ids) == [scenes[i]["captions"] for i in ids]
    assert explore.stimuli(micro_root, ids).shape == (3, 64, 64, 3)


def test_repeats_match_lib_nsd(micro_root, tmp_path):
    """Two independent readers (explore and lib.nsd.prepare_subject) give the same repeats."""
    from lib.nsd import PreparedSubject, prepare_subject

    path = prepare_subject(micro_root / "nsd", 1, tmp_path, progress=False)
    prep = PreparedSubject(path)
    gen = explore.roi_mask(micro_root, 1, "nsdgeneral", (1,))
    reps, ids, is_test = explore.repeat_averaged(micro_root, 1, gen)
    theirs = prep.repeats("train")
    train_ids = prep.image_ids("train")
    order = np.argsort(ids[~is_test])
    np.testing.assert_array_equal(ids[~is_test][order], train_ids)
    np.testing.assert_allclose(reps[~is_test][order], theirs, atol=2e-3)


def test_reverse_correlation_finds_the_true_receptive_field(micro_root):
    v1 = explore.roi_mask(micro_root, 1, "prf-visualrois", (1, 2))
    v1 &= explore.roi_mask(micro_root, 1, "nsdgeneral", (1,))
    reps, ids, _ = explore.repeat_averaged(micro_root, 1, v1)
    vox = int(np.argmax(noise_ceiling(reps)))
    scenes = explore.load_scenes(micro_root)
    places = np.array([scenes[i]["place"] for i in ids])
    est = explore.estimated_receptive_field(reps[:, :, vox].mean(1),
                                            explore.stimuli(micro_root, ids), res=16,
                                            groups=places)
    tuning = explore.load_tuning(micro_root, 1)
    tv = int(np.flatnonzero((tuning["voxel_ijk"] == np.argwhere(v1)[vox]).all(1))[0])
    peak = np.array(np.unravel_index(np.argmax(est), est.shape)) + 0.5  # (row, col)
    true = np.array([tuning["rf_y"][tv], tuning["rf_x"][tv]]) * 16
    assert np.linalg.norm(peak - true) < 3  # within 3 of 16 cells
