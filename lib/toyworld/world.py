"""The world itself: stimuli, captions, design, brains, written in NSD's layout + ground truth.

:func:`build_world` is what :func:`lib.toyworld.build.build` calls (and caches). Every random
draw comes from its own stream, ``numpy.random.default_rng([seed, stream, ...])``, so the world
is bit-for-bit reproducible and independent of the order of the steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .presets import WorldPreset
from .timing import PhaseTimes

#: Seed streams (second element of the seed sequence).
STREAM_SCENES, STREAM_CAPTIONS, STREAM_DESIGN = 1, 2, 3
STREAM_ANATOMY, STREAM_TUNING, STREAM_SESSIONS, STREAM_NULL = 10, 11, 12, 13


_TRUTH_README = """# Ground truth of the toy world

What the simulator knows and an analysis of NSD never could (see lib/toyworld/anatomy.py
and brain.py).

- `scenes.json`: one record per stimulus (index = 0-based nsdId): `cocoId`, `captions`,
  `place`, `objects` (kind, color, size, x, y, text; x, y in 0-1 with y down),
  `has_<kind>`, `area_<kind>`.
- `WORLD.json`: preset, seed, `null`, world code version, wall and CPU seconds per step,
  noise ceiling per ROI.
- `subjXX/tuning.h5`: every voxel of nsdgeneral and the ROIs: `voxel_ijk`, `area`
  (V1, V2, V3, hV4, face, body, word, place, general), receptive fields (`rf_x`, `rf_y`,
  `rf_sigma`, image units), weights (`w_contrast`, `w_color`, `w_kind`, `w_objcolor`,
  `w_place`, `w_semantic`, `mix`), `snr`, `noise_sd`, `baseline`, `global_load`,
  `signal` (noise-free response of each voxel to each of the subject's images, z units,
  rows in `subjectim` order, `nsd_id`), `signal_row` (the row of `signal` driving each
  trial, in trial order), `session_gain`, `session_offset`, `reliability_nsdgeneral`.
  Single-trial betas (percent signal change) of trial t are
  `gain_s * (baseline + noise_sd * sqrt(snr) * signal[signal_row[t]]) + offset_s + noise +
  global`. In the normal world `signal_row[t]` is the image shown on trial t; in a *null*
  world (`WORLD.json`: `"null": true`) it is the image of another, random trial, so the
  responses carry no information about the images shown.
- `subjXX/prf_eccentricity.nii.gz`, `prf_angle.nii.gz`: retinotopy of V1-V3 and hV4
  (eccentricity in image widths, polar angle in radians, 0 = right horizontal meridian).
- `subjXX/reliability.nii.gz`, `reliability.json`: measured noise ceiling
  (`lib.scoring.noise_ceiling`) of three-repeat averages (per-session z-scoring with
  training-trial statistics).
"""


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *stream])


# --------------------------------------------------------------------------- design
def make_design(p: WorldPreset, seed: int) -> dict:
    """Draw the experimental design: who sees which image when.

    Returns
    -------
    design : dict
        ``masterordering`` (n_trials,) 1-based; ``subjectim`` (n_subjects, n_images) 1-based
        73k ids, shared first; ``sharedix`` (n_shared,) 1-based; ``stimpattern``
        (n_sessions, n_runs, n_slots) 0/1; ``coco_id`` and ``coco_split`` (n_stimuli,).
    """
    rng = _rng(seed, STREAM_DESIGN)
    perm = rng.permutation(p.n_stimuli)  # 0-based nsd ids in allocation order
    shared = np.sort(perm[: p.n_shared])
    own = p.n_images - p.n_shared
    subjectim = np.zeros((p.n_subjects, p.n_images), np.int64)
    for k in range(p.n_subjects):
        mine = np.sort(perm[p.n_shared + k * own: p.n_shared + (k + 1) * own])
        subjectim[k] = np.concatenate([shared, mine]) + 1
    # every image n_repeats times, in random order (one ordering for all subjects, as NSD)
    masterordering = rng.permutation(np.repeat(np.arange(1, p.n_images + 1), p.n_repeats))
    stimpattern = np.zeros((p.n_sessions, p.n_runs, p.n_slots), np.uint8)
    k = len(p.trials_per_run)
    for s in range(p.n_sessions):
        for r in range(p.n_runs):
            n_trials = p.trials_per_run[r % k]
            # blanks at both ends of a run and a few in between
            inner = rng.choice(np.arange(1, p.n_slots - 1), size=n_trials, replace=False)
            stimpattern[s, r, np.sort(inner)] = 1
    coco_id = rng.choice(np.arange(1, 600_000), size=p.n_stimuli, replace=False)
    coco_split = np.where(rng.random(p.n_stimuli) < 0.1, "val2017", "train2017")
    return {"masterordering": masterordering, "subjectim": subjectim, "sharedix": shared + 1,
            "stimpattern": stimpattern, "coco_id": coco_id, "coco_split": coco_split}


def stim_info_frame(p: WorldPreset, design: dict):
    """The ``nsd_stim_info_merged.csv`` table (NSD's columns; ``subjectK_repR`` 1-based trials)."""
    import pandas as pd

    n = p.n_stimuli
    frame = pd.DataFrame({
        "cocoId": design["coco_id"],
        "cocoSplit": design["coco_split"],
        "cropBox": ["(0, 0, 0, 0)"] * n,
        "loss": np.zeros(n),
        "nsdId": np.arange(n),
        "flagged": np.zeros(n, bool),
        "BOLD5000": np.zeros(n, bool),
        "shared1000": np.isin(np.arange(n), design["sharedix"] - 1),
    })
    mo = design["masterordering"]
    order = np.argsort(mo, kind="stable")  # trials grouped by image index, in trial order
    trials_of = order.reshape(p.n_images, p.n_repeats) + 1  # 1-based trial numbers
    for k in range(p.n_subjects):
        frame[f"subject{k + 1}"] = np.isin(np.arange(n), design["subjectim"][k] - 1).astype(int)
    for k in range(p.n_subjects):
        ids = design["subjectim"][k] - 1
        for r in range(p.n_repeats):
            col = np.zeros(n, np.int64)
            col[ids] = trials_of[:, r]
            frame[f"subject{k + 1}_rep{r}"] = col
    return frame


# --------------------------------------------------------------------------- the world
def _progress(iterable, **kw):
    from tqdm.auto import tqdm

    return tqdm(iterable, leave=False, **kw)


def build_world(p: WorldPreset, seed: int, out: Path, null: bool = False) -> dict:
    """Write the NSD layout under ``out/nsd`` and the ground truth under ``out/truth``.

    Parameters
    ----------
    p : WorldPreset
    seed : int
    out : Path
    null : bool
        Build the *null world*: the same stimuli, captions, design, voxels, tuning and noise
        (bit for bit), but every trial's signal comes from the image of another trial
        (:func:`lib.toyworld.brain.null_signal_rows`), so the responses carry no information
        about the images shown.

    Returns
    -------
    summary : dict
        ``null``, ``timings`` (``{step: {"wall_s", "cpu_s"}}``), voxel counts and noise
        ceiling per subject and ROI.
    """
    from lib.nsd.layout import NSDLayout

    from . import anatomy, brain
    from . import stimulus_features as sf

    nsd = NSDLayout(out / "nsd")
    timings = PhaseTimes(prefix="[toyworld] world:")
    design, images, latents = _write_stimuli(p, seed, nsd, out / "truth", timings.lap)

    # -- the brain: grid, features shared by both subjects
    grid = anatomy.make_grid(p.voxel_size)
    shared = {"features": sf.pixel_features(images, res=min(sf.FEATURE_RES, p.image_size)),
              "objects": sf.object_arrays(latents)}
    semantic = sf.concept_vector(latents) @ sf.semantic_axes(seed)
    shared["semantic"] = np.tanh(brain._z(semantic))
    timings.lap("grid_and_features")

    # row of the subject's signal (its images in subjectim order) driving each trial
    signal_row = design["masterordering"] - 1
    if null:
        signal_row = brain.null_signal_rows(signal_row, _rng(seed, STREAM_NULL))
    summary: dict = {"null": bool(null), "timings": timings.phases, "subjects": {}}
    for k in range(1, p.n_subjects + 1):
        summary["subjects"][f"subj{k:02d}"] = _simulate_subject(
            p, seed, k, nsd, out / "truth", grid, shared, design, signal_row, null, timings.lap)
    summary["n_stimuli"] = p.n_stimuli
    summary["grid_shape"] = list(grid.shape)
    return summary


def _write_stimuli(p: WorldPreset, seed: int, nsd, truth: Path, tick) -> tuple:
    """Render the stimuli, caption them, draw the design; write NSD's experiment-wide files
    (design, stimulus info, image brick, COCO captions) and the scenes' ground truth.

    Returns ``(design, images, latents)``: :func:`make_design`'s dict, the images
    (n_stimuli, size, size, 3) uint8 and each scene's latent record.
    """
    from lib.io import write_json, write_text

    from . import layout
    from .captions import caption_scene
    from .scenes import render_scene, sample_scenes, scene_latents

    scenes = sample_scenes(p.n_stimuli, _rng(seed, STREAM_SCENES))
    images = np.stack([render_scene(s, p.image_size) for s in
                       _progress(scenes, desc="render stimuli")])
    latents = [scene_latents(s) for s in scenes]
    captions = [caption_scene(s, _rng(seed, STREAM_CAPTIONS, i)) for i, s in enumerate(scenes)]
    tick("stimuli")

    design = make_design(p, seed)
    layout.write_expdesign(nsd.expdesign, design["masterordering"], design["subjectim"],
                           design["sharedix"], design["stimpattern"])
    layout.write_stim_info(nsd.stim_info, stim_info_frame(p, design))
    layout.write_image_brick(nsd.stimuli, images)
    for split in ("train2017", "val2017"):
        ids = np.flatnonzero(design["coco_split"] == split)
        recs = [{"license": 1, "file_name": f"{int(design['coco_id'][i]):012d}.jpg",
                 "coco_url": "", "height": p.image_size, "width": p.image_size,
                 "date_captured": "", "flickr_url": "", "id": int(design["coco_id"][i])}
                for i in ids]
        anns = [{"image_id": int(design["coco_id"][i]), "id": int(i) * 10 + j, "caption": c}
                for i in ids for j, c in enumerate(captions[i])]
        layout.write_coco_captions(nsd.annotations / f"captions_{split}.json", recs, anns,
                                   f"braincap toy world captions ({split})")
    write_json(truth / "scenes.json", [
        {"nsdId": i, "cocoId": int(design["coco_id"][i]), "captions": captions[i], **latents[i]}
        for i in range(p.n_stimuli)])
    write_text(truth / "README.md", _TRUTH_README)
    tick("design_and_stimulus_files")
    return design, images, latents


def _simulate_subject(p: WorldPreset, seed: int, k: int, nsd, truth: Path, grid,
                      shared: dict, design: dict, signal_row: np.ndarray, null: bool,
                      tick) -> dict:
    """Subject ``k``'s ROIs, tuning, noise-free signal, single-trial betas of every session
    and ground truth; returns its reliability table (:func:`_write_truth`).

    ``shared``: the ``features``, ``objects`` and ``semantic`` values of every stimulus.
    """
    from lib.scoring import noise_ceiling

    from . import anatomy, brain, layout

    subj = f"subj{k:02d}"
    rois = anatomy.make_rois(grid, _rng(seed, STREAM_ANATOMY, k))
    for name, vol in rois.volumes.items():
        layout.write_nifti(nsd.roi(k, name), vol.astype(np.int16), grid.affine)
    tun = brain.make_tuning(grid, rois, _rng(seed, STREAM_TUNING, k))
    ids = design["subjectim"][k - 1] - 1
    sub_obj = {key: val[ids] for key, val in shared["objects"].items()}
    sub_feat = {key: val[ids] for key, val in shared["features"].items()}
    signal = brain.simulate_signal(tun, sub_feat, sub_obj, shared["semantic"][ids])
    tick(f"{subj}_tuning")

    model = tun.area != "outside"
    gen_mask = rois.volumes["nsdgeneral"][tuple(tun.ijk.T)] == 1
    reps, gains, offsets = _write_sessions(p, seed, k, nsd, grid, tun, signal, design,
                                           signal_row, model, gen_mask)
    tick(f"{subj}_betas")

    rel = noise_ceiling(reps, n_average=reps.shape[1])
    table = _write_truth(truth / subj, grid, rois, tun, signal, ids, model, gen_mask, rel,
                         gains, offsets, signal_row, null)
    tick(f"{subj}_truth")
    return table


def _write_sessions(p: WorldPreset, seed: int, k: int, nsd, grid, tun, signal, design: dict,
                    signal_row, model, gen_mask) -> tuple:
    """Simulate and write subject ``k``'s betas, one NIfTI per session.

    Returns ``(reps, gains, offsets)``: the nsdgeneral responses z-scored per session with
    its training trials' statistics, as the analysis will see them, (n_images, n_repeats,
    n_nsdgeneral), and each session's gains and offsets of the simulated voxels.
    """
    from . import brain, layout

    mo, per_session = design["masterordering"], p.trials_per_session
    reps = np.zeros((p.n_images, p.n_repeats, int(gen_mask.sum())), np.float32)
    seen = np.zeros(p.n_images, np.int64)
    gains, offsets = [], []
    for s in _progress(range(1, p.n_sessions + 1), desc=f"subj{k:02d} sessions"):
        trials = np.arange((s - 1) * per_session, s * per_session)
        img = mo[trials] - 1
        betas, sess = brain.simulate_session(signal, tun, signal_row[trials],
                                             _rng(seed, STREAM_SESSIONS, k, s))
        gains.append(sess["gain"][model])
        offsets.append(sess["offset"][model])
        stored = np.clip(np.round(betas * 300), -32768, 32767).astype(np.int16)
        vol = np.zeros(grid.shape + (len(trials),), np.int16, order="F")  # NIfTI order
        vol[tuple(tun.ijk.T)] = stored.T
        layout.write_nifti(nsd.betas(k, s), vol, grid.affine)
        del vol
        # reliability as the analysis will see it: z-scored per session (train trials' stats)
        g = stored[:, gen_mask].astype(np.float32) / 300
        train = img >= p.n_shared
        g = (g - g[train].mean(0)) / g[train].std(0)
        for t, i in enumerate(img):
            reps[i, seen[i]] = g[t]
            seen[i] += 1
    return reps, gains, offsets


def _write_truth(folder: Path, grid, rois, tun, signal, ids, model, gen_mask, rel, gains,
                 offsets, signal_row, null) -> dict:
    """Write one subject's ground truth; return its reliability table."""
    import h5py

    from lib.io import atomic_path, write_json
    from lib.nsd.layout import ROI_LABELS

    from . import layout

    layout.write_nifti(folder / "prf_eccentricity.nii.gz",
                       rois.eccentricity.astype(np.float32), grid.affine)
    layout.write_nifti(folder / "prf_angle.nii.gz", rois.polar_angle.astype(np.float32),
                       grid.affine)
    rel_vol = np.full(grid.shape, np.nan, np.float32)
    gen_ijk = tun.ijk[gen_mask]
    rel_vol[tuple(gen_ijk.T)] = rel
    layout.write_nifti(folder / "reliability.nii.gz", rel_vol, grid.affine)

    with atomic_path(folder / "tuning.h5") as tmp, h5py.File(tmp, "w") as f:
        kw = {"track_times": False}
        f.attrs["description"] = (
            "Ground-truth tuning of the simulated voxels (brain voxels outside nsdgeneral "
            "and the ROIs omitted). signal: noise-free response (z units) to each of the "
            "subject's images (rows in subjectim order; nsd_id gives the 0-based 73k id); "
            "betas = gain_s * (baseline + noise_sd*sqrt(snr)*signal) + offset_s + noise.")
        f.attrs["affine"] = grid.affine
        f.attrs["null"] = bool(null)
        f.create_dataset("signal_row", data=np.asarray(signal_row, np.int64), **kw)
        f.create_dataset("nsd_id", data=ids.astype(np.int64), **kw)
        f.create_dataset("voxel_ijk", data=tun.ijk[model].astype(np.int64), **kw)
        f.create_dataset("area", data=tun.area[model].astype("S8"), **kw)
        f.create_dataset("in_nsdgeneral", data=gen_mask[model], **kw)
        for name in ("rf_x", "rf_y", "rf_sigma", "w_contrast", "w_color", "w_kind",
                     "w_objcolor", "w_place", "w_semantic", "mix", "snr", "noise_sd",
                     "baseline", "hemi", "global_load"):
            f.create_dataset(name, data=getattr(tun, name)[model], **kw)
        f.create_dataset("signal", data=signal[:, model], **kw)
        f.create_dataset("session_gain", data=np.stack(gains), **kw)
        f.create_dataset("session_offset", data=np.stack(offsets), **kw)
        f.create_dataset("reliability_nsdgeneral", data=rel.astype(np.float32), **kw)
    table = {"nsdgeneral": {"n_voxels": len(rel), "median": float(np.median(rel)),
                            "mean": float(rel.mean())}}
    ijk = tuple(gen_ijk.T)
    for fname, labels in ROI_LABELS.items():
        if fname == "nsdgeneral":
            continue
        lab = rois.volumes[fname][ijk]
        groups = {"V1": (1, 2), "V2": (3, 4), "V3": (5, 6), "hV4": (7,)} \
            if fname == "prf-visualrois" else {fname.split("-")[1]: tuple(labels)}
        for gname, vals in groups.items():
            m = np.isin(lab, vals)
            if m.any():
                table[gname] = {"n_voxels": int(m.sum()), "median": float(np.median(rel[m])),
                                "mean": float(rel[m].mean())}
    m = ~np.isin(tun.area[gen_mask], ["V1", "V2", "V3", "hV4", "face", "body", "word", "place"])
    table["other nsdgeneral"] = {"n_voxels": int(m.sum()), "median": float(np.median(rel[m])),
                                 "mean": float(rel[m].mean())}
    write_json(folder / "reliability.json", table)
    return table
