"""BLIP-2 Q-Former features: same values as the full model, batched, cached and resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.features.qformer import (
    extract_qformer_features,
    image_query_outputs,
    load_qformer_encoder,
    qformer_features,
)
from tests.tiny_blip2 import make_tiny_blip2


class _Images:
    """A subject's image store (ids -> uint8 images) that counts reads and can fail."""

    def __init__(self, n=10, fail_after=None):
        rng = np.random.default_rng(0)
        self.ids = np.arange(100, 100 + n)
        self.brick = rng.integers(0, 256, (n, 36, 36, 3), dtype=np.uint8)
        self.reads: list[list[int]] = []
        self.fail_after = fail_after

    def image_ids(self, split):
        return self.ids[:7] if split == "train" else self.ids[7:]

    def images(self, nsd_ids):
        if self.fail_after is not None and len(self.reads) >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.reads.append([int(i) for i in nsd_ids])
        return self.brick[np.searchsorted(self.ids, nsd_ids)]


@pytest.fixture(scope="module", params=["opt", "t5"])
def tiny(request, tmp_path_factory):
    return make_tiny_blip2(tmp_path_factory.mktemp(request.param) / "blip2", kind=request.param)


def test_matches_full_model(tiny):
    """Loading only vision + Q-Former gives the full model's Q-Former output."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    images = _Images().brick[:5]
    encoder, image_processor = load_qformer_encoder(tiny, device="cpu")
    assert not any(n.startswith("language") for n, _ in encoder.named_parameters())
    ours = qformer_features(images, encoder, image_processor, batch_size=2)

    full = Blip2ForConditionalGeneration.from_pretrained(tiny).eval()
    proc = Blip2Processor.from_pretrained(tiny)
    pixels = proc.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = full.get_image_features(pixels, return_dict=True).qformer_outputs.last_hidden_state
    assert ours.shape == (5, full.config.num_query_tokens, full.config.qformer_config.hidden_size)
    np.testing.assert_allclose(ours, out.numpy(), rtol=1e-5, atol=1e-5)


def test_one_query_path_for_every_blip2_class(tiny):
    """image_query_outputs on the full captioner equals the library's own image features."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    images = _Images().brick[:3]
    full = Blip2ForConditionalGeneration.from_pretrained(tiny).eval()
    proc = Blip2Processor.from_pretrained(tiny)
    pixels = proc.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = full.get_image_features(pixels, return_dict=True).qformer_outputs.last_hidden_state
        ours = image_query_outputs(full, pixels)
    torch.testing.assert_close(ours, ref)


def test_batching_does_not_change_values(tiny):
    images = _Images().brick
    encoder, image_processor = load_qformer_encoder(tiny, device="cpu")
    a = qformer_features(images, encoder, image_processor, batch_size=10)
    b = qformer_features(images, encoder, image_processor, batch_size=3)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_cache_and_resume(tiny, tmp_path):
    cache = tmp_path / "qformer.h5"
    killed = _Images(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        extract_qformer_features(killed, tiny, cache, batch_size=3, device="cpu")
    assert len(killed.reads) == 2

    resumed = _Images()
    feats, ids = extract_qformer_features(resumed, tiny, cache, batch_size=3, device="cpu")
    # only the batches the killed run did not finish are read again
    assert sorted(i for batch in resumed.reads for i in batch) == list(range(106, 110))
    np.testing.assert_array_equal(ids, np.arange(100, 110))

    fresh = _Images()
    encoder, image_processor = load_qformer_encoder(tiny, device="cpu")
    expected = qformer_features(fresh.brick, encoder, image_processor)
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-5)

    again = _Images()
    feats2, _ = extract_qformer_features(again, tiny, cache, batch_size=3, device="cpu")
    assert again.reads == []  # everything cached: no image read, no model loaded
    np.testing.assert_array_equal(feats, feats2)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="blip2_model"):
        load_qformer_encoder(tmp_path / "nope", device="cpu")


def test_cache_path_follows_the_checkpoint_contents(tmp_path):
    """A retrained local checkpoint gets a new cache file, never the stale features."""
    import os

    from lib.decoding.stage1 import qformer_cache_path

    folder = tmp_path / "blip2-toy-opt"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(b"a" * 10)
    first = qformer_cache_path(tmp_path / "derived", "toy", 1, folder)
    assert first == qformer_cache_path(tmp_path / "derived", "toy", 1, folder)
    weights.write_bytes(b"b" * 12)
    os.utime(weights, ns=(1, 1))
    assert qformer_cache_path(tmp_path / "derived", "toy", 1, folder) != first
    hub = qformer_cache_path(tmp_path / "derived", "nsd", 1, "Salesforce/blip2-opt-2.7b")
    assert hub.name == "qformer_blip2-opt-2.7b.h5"
