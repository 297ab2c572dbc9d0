"""Stage 1: the fMRI -> query-token decoder, its files, and the fit on a prepared subject."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lib.decoding.stage1 import (
    QueryTokenDecoder,
    average_by_id,
    cosine_matrix,
    load_decoder,
    read_predictions,
    write_predictions,
)


def _random_decoder(block_sizes=(6, 6), n_query=3, hidden=5, seed=0):
    dec = QueryTokenDecoder(list(block_sizes), n_query, hidden, {"memory_size": len(block_sizes),
                                                                 "roi": None})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dec.weight.copy_(torch.randn(dec.weight.shape, generator=g))
        dec.bias.copy_(torch.randn(dec.bias.shape, generator=g))
    return dec


def test_forward_is_the_linear_map_on_concatenated_blocks():
    dec = _random_decoder()
    rng = np.random.default_rng(0)
    blocks = [rng.normal(size=(4, 6)).astype(np.float32) for _ in range(2)]
    W, b = dec.weight.detach().numpy(), dec.bias.detach().numpy()
    expected = (np.hstack(blocks) @ W.T + b).reshape(4, 3, 5)
    np.testing.assert_allclose(dec.predict(blocks, batch_size=3), expected, rtol=1e-5, atol=1e-5)


def test_safetensors_round_trip(tmp_path):
    dec = _random_decoder()
    dec.save(tmp_path / "run")
    assert (tmp_path / "run" / "decoder.safetensors").exists()
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert settings["block_sizes"] == [6, 6] and settings["memory_size"] == 2
    loaded = load_decoder(tmp_path / "run")
    assert loaded.settings == {"memory_size": 2, "roi": None}
    x = [np.ones((2, 6), np.float32), np.arange(12, dtype=np.float32).reshape(2, 6)]
    np.testing.assert_array_equal(loaded.predict(x), dec.predict(x))


def test_wrong_blocks_are_a_clear_error():
    with pytest.raises(ValueError, match="same ROI and memory window"):
        _random_decoder().predict([np.ones((2, 6), np.float32)])


def test_load_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="03_alignment_ridge"):
        load_decoder(tmp_path)


def test_average_by_id_matches_pandas():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, 40)
    vals = rng.normal(size=(40, 2, 3))
    means, uniq = average_by_id(vals, ids)
    expected = pd.DataFrame(vals.reshape(40, -1)).groupby(ids).mean()
    np.testing.assert_array_equal(uniq, expected.index.to_numpy())
    np.testing.assert_allclose(means.reshape(len(uniq), -1), expected.to_numpy(), rtol=1e-6)


def test_predictions_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    p = write_predictions(tmp_path / "predictions.h5", rng.normal(size=(3, 2, 4)), [5, 6, 7],
                          rng.normal(size=(4, 2, 4)), [1, 2, 3, 4])
    out = read_predictions(p.parent)
    assert out["test_pred"].shape == (3, 2, 4) and out["test_pred"].dtype == np.float32
    np.testing.assert_array_equal(out["train_ids"], [1, 2, 3, 4])


def test_cosine_matrix_matches_sklearn():
    from sklearn.metrics.pairwise import cosine_similarity

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 2, 3)), rng.normal(size=(5, 2, 3))
    np.testing.assert_allclose(cosine_matrix(a, b), cosine_similarity(a.reshape(4, -1),
                                                                      b.reshape(5, -1)))
