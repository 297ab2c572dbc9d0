"""Captions from ROI indicator patterns: normalisation as in the original study, category check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.decoding.roi_captions import auto_scale, indicator_tokens, names_category
from lib.decoding.stage1 import QueryTokenDecoder


def _decoder(block_sizes, n_query=3, hidden=5, seed=0):
    dec = QueryTokenDecoder(block_sizes, n_query, hidden)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dec.weight.copy_(torch.randn(dec.weight.shape, generator=g))
        dec.bias.copy_(torch.randn(dec.bias.shape, generator=g))
    return dec.eval()


def test_indicator_tokens_by_hand():
    dec = _decoder([6])
    x = np.array([1, 0, 1, 1, 0, 0], np.float32)
    W = dec.weight.detach().numpy().astype(np.float64)
    b = dec.bias.detach().numpy().astype(np.float64)
    scale = 11.0
    expected = []
    for q in range(3):  # original: p = roi @ coef_q.T ; p /= ||p|| ; p = p * const + intercept_q
        Wq, bq = W[q * 5:(q + 1) * 5], b[q * 5:(q + 1) * 5]
        p = Wq @ x
        expected.append(p / (np.linalg.norm(p) + 1e-8) * scale + bq)
    got = indicator_tokens(dec, x, scale)
    assert got.shape == (1, 3, 5)
    np.testing.assert_allclose(got[0], np.array(expected), rtol=1e-5, atol=1e-5)
    # every token's deviation from the intercept has norm `scale`
    dev = got[0] - b.reshape(3, 5)
    np.testing.assert_allclose(np.linalg.norm(dev, axis=-1), scale, rtol=1e-5)


def test_indicator_goes_to_block_zero_of_a_memory_window():
    dec = _decoder([4, 4, 4])
    x = np.array([0, 1, 1, 0], np.float32)
    got = indicator_tokens(dec, np.stack([x, 1 - x]), 2.0)
    # same as a one-block decoder holding only block 0's weights
    single = _decoder([4])
    with torch.no_grad():
        single.weight.copy_(dec.weight[:, :4])
        single.bias.copy_(dec.bias)
    np.testing.assert_allclose(got, indicator_tokens(single, np.stack([x, 1 - x]), 2.0),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="voxels"):
        indicator_tokens(dec, np.ones(5, np.float32), 1.0)


def test_auto_scale_is_median_deviation_norm():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(50, 3, 4))
    dev = t - t.mean(0)
    assert auto_scale(t) == pytest.approx(np.median(np.sqrt((dev ** 2).sum(-1))))


@pytest.mark.parametrize("caption,roi,expected", [
    ("a smiley face in the sky", "faces", True),
    ("a red circle on the grass", "faces", False),
    ("a little person in a room", "bodies", True),
    ("a sign with letters", "words", True),
    ("a swordfish", "words", False),
    ("a blue star over a lake", "places", True),
    ("a red circle", "V1", None),
])
def test_names_category(caption, roi, expected):
    assert names_category(caption, roi) is expected


def test_named_categories():
    from lib.decoding.roi_captions import named_categories

    assert named_categories("a smiley face next to a person on the grass") == [
        "faces", "bodies", "places"]
    assert named_categories("a red circle") == []


def test_memory_ablation_reads_runs_and_metrics(tmp_path):
    import json

    from lib.decoding.ablation import ablation_figure, memory_ablation
    from lib.decoding.stage1 import write_predictions
    from lib.metrics import retrieval_topk

    rng = np.random.default_rng(0)
    ids = np.arange(30, 60)
    true = rng.normal(size=(30, 3, 4)).astype(np.float32)
    for name, noise in (("stage1", 0.5), ("stage1_mem3", 2.0), ("stage2", 1.0)):
        pred = true + noise * rng.normal(size=true.shape).astype(np.float32)
        write_predictions(tmp_path / name / "predictions.h5", pred, ids)
    (tmp_path / "metrics.json").write_text(json.dumps({"stage1": {
        "captions": {"brain": {"CIDEr": 0.8}, "shuffled_brain": {"CIDEr": 0.1}},
        "retrieval": {"brain": {}}}}))
    table = memory_ablation(tmp_path, [1, 3, 5], features=true[::-1], feature_ids=ids[::-1],
                            k=10, n_draws=5)
    assert list(table.run) == ["stage1", "stage1_mem3", "stage2"]
    assert table.set_index("run").loc["stage1", "CIDEr"] == 0.8
    assert np.isnan(table.set_index("run").loc["stage2", "CIDEr"])
    from lib.decoding.stage1 import read_predictions

    p = read_predictions(tmp_path / "stage1_mem3")
    flat = lambda x: x.reshape(len(x), -1)
    ref = retrieval_topk(flat(p["test_pred"]), flat(true), k=10, n_draws=5, seed=0,
                         repeat_averaged=True, center="candidates")  # 05's options
    assert table.set_index("run").loc["stage1_mem3", "top1"] == pytest.approx(
        ref["brain_to_image"]["mean"])
    assert table.set_index("run").loc["stage1_mem3", "memory_size"] == 3
    assert len(ablation_figure(table).data) >= 3
