"""Tests of lib.features: the resumable HDF5 cache and per-layer hidden-state features."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lib.features.cache import extract_cached
from tests.side_by_side import run_side_by_side


def _features(keys):
    """A deterministic 'model': features depend only on the key."""
    k = np.asarray(keys, dtype=np.float64)
    return {"x": np.stack([np.sin(k), np.cos(k), k**0.5], axis=1).astype(np.float32),
            "y": (k * 2).astype(np.int64)}


class _Killed(RuntimeError):
    pass


def test_extract_cached_resumes_after_kill(tmp_path):
    keys = list(range(100, 137))  # 37 keys: last batch is partial
    path = tmp_path / "cache.h5"
    seen = []

    def killed_after_3(batch):
        if len(seen) == 3:
            raise _Killed("simulated kill")
        seen.append(list(batch))
        return _features(batch)

    with pytest.raises(_Killed):
        extract_cached(path, keys, killed_after_3, batch_size=5)
    assert len(seen) == 3
    first = [k for b in seen for k in b]

    resumed = []

    def compute(batch):
        resumed.append(list(batch))
        return _features(batch)

    out = extract_cached(path, keys, compute, batch_size=5)
    rest = [k for b in resumed for k in b]
    # only the missing keys were computed, each exactly once
    assert sorted(rest) == sorted(set(keys) - set(first))
    assert len(rest) == len(set(rest))
    direct = _features(keys)
    for name in direct:
        np.testing.assert_array_equal(out[name], direct[name])
    # a third call computes nothing
    resumed.clear()
    again = extract_cached(path, keys, compute, batch_size=5)
    assert resumed == []
    np.testing.assert_array_equal(again["x"], direct["x"])


def _fill_cache(path, log, keys):
    """Fill the cache at ``path``, writing every batch computed to the file ``log``."""
    def compute(batch):
        with open(log, "a") as fh:
            fh.write(" ".join(map(str, batch)) + "\n")
        time.sleep(0.05)
        return _features(batch)

    out = extract_cached(path, keys, compute, batch_size=4)
    np.testing.assert_array_equal(out["x"], _features(keys)["x"])


def test_processes_filling_one_cache_take_turns(tmp_path):
    """Two processes on one cache (two chapters on two Dask workers): HDF5 refuses a second
    writer, so without the lock one fails; with it, both return every row, computed once."""
    keys, log = list(range(40)), tmp_path / "computed.txt"
    assert run_side_by_side(_fill_cache, (tmp_path / "c.h5", log, keys)) == [0, 0]
    computed = [int(k) for line in log.read_text().splitlines() for k in line.split()]
    assert sorted(computed) == keys


def test_extract_cached_rejects_other_keys(tmp_path):
    path = tmp_path / "cache.h5"
    extract_cached(path, [1, 2, 3], _features, batch_size=2)
    with pytest.raises(ValueError, match="other keys"):
        extract_cached(path, [1, 2, 4], _features, batch_size=2)


def test_extract_cached_checks_batch_shape(tmp_path):
    with pytest.raises(ValueError, match="first dimension"):
        extract_cached(tmp_path / "c.h5", [1, 2, 3], lambda b: {"x": np.zeros((1, 2))},
                       batch_size=2)


# --------------------------------------------------------------------------------------
# hidden-state features on tiny random models built from configs (no hub access)
# --------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lib.features import hidden  # noqa: E402

IMAGE_SIZE = 32
MEAN, STD = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.3])
WORDS = "a the red green blue circle square face person word on in sky grass water room".split()


def _save_vision(tmp_path, name, config):
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config)
    proc = transformers.ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                          image_mean=MEAN.tolist(), image_std=STD.tolist())
    path = tmp_path / name
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vision_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vision")
    return {
        "vit": _save_vision(tmp, "vit", transformers.ViTConfig(
            image_size=IMAGE_SIZE, patch_size=8, hidden_size=24, num_hidden_layers=3,
            num_attention_heads=2, intermediate_size=32)),
        "resnet": _save_vision(tmp, "resnet", transformers.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 12, 16, 20], depths=[1, 1, 1, 1],
            layer_type="basic")),
        "convnext": _save_vision(tmp, "convnext", transformers.ConvNextConfig(
            hidden_sizes=[8, 12, 16, 20], depths=[1, 1, 1, 1], image_size=IMAGE_SIZE)),
    }


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>")


@pytest.fixture(scope="module")
def language_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("language")
    tokenizer = _tokenizer()
    n_vocab = len(tokenizer)
    configs = {
        "gpt2": transformers.GPT2Config(vocab_size=n_vocab, n_positions=32, n_embd=16,
                                        n_layer=3, n_head=2),
        "opt": transformers.OPTConfig(vocab_size=n_vocab, max_position_embeddings=32,
                                      hidden_size=16, num_hidden_layers=3,
                                      num_attention_heads=2, ffn_dim=32, word_embed_proj_dim=16,
                                      pad_token_id=0, bos_token_id=2, eos_token_id=3),
    }
    paths = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config)
        paths[name] = tmp / name
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def _images(keys):
    rng = np.random.default_rng(1)
    bank = rng.integers(0, 256, size=(50, 40, 40, 3), dtype=np.uint8)
    return bank[np.asarray(keys)]


def _manual_pixels(images):
    """Resize (bilinear, PIL) and normalise, independently of the processor."""
    from PIL import Image

    out = []
    for im in images:
        im = Image.fromarray(im).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        x = (np.asarray(im, dtype=np.float64) / 255.0 - MEAN) / STD
        out.append(x.transpose(2, 0, 1))
    return torch.tensor(np.stack(out), dtype=torch.float32)


def _block_outputs(model, blocks, **inputs):
    """Outputs of each block, captured by forward hooks during a plain forward pass."""
    outs = []
    handles = [b.register_forward_hook(
        lambda m, i, o: outs.append(o[0] if isinstance(o, tuple) else o)) for b in blocks]
    with torch.no_grad():
        model(**inputs)
    for h in handles:
        h.remove()
    return outs


@pytest.mark.parametrize("name", ["vit", "resnet", "convnext"])
def test_vision_features_match_manual_forward(vision_models, tmp_path, name):
    path = vision_models[name]
    keys = [3, 7, 11, 19, 23]
    feats = hidden.vision_layer_features(path, _images, keys, tmp_path / "c.h5",
                                         batch_size=2, device="cpu")
    model = transformers.AutoModel.from_pretrained(path).eval()
    pixels = _manual_pixels(_images(keys))
    if name == "vit":
        blocks = model.layers if hasattr(model, "layers") else model.encoder.layer
        manual = [o[:, 1:].mean(dim=1) for o in _block_outputs(model, blocks, pixel_values=pixels)]
        cls = hidden.vision_layer_features(path, _images, keys, tmp_path / "cls.h5",
                                           pooling="cls", device="cpu")
        np.testing.assert_allclose(
            cls[len(blocks)], _block_outputs(model, blocks, pixel_values=pixels)[-1][:, 0],
            rtol=1e-4, atol=1e-5)
    else:
        blocks = model.encoder.stages
        manual = [o.mean(dim=(2, 3)) for o in _block_outputs(model, blocks, pixel_values=pixels)]
    assert sorted(feats) == list(range(len(blocks) + 1))
    for i, m in enumerate(manual, start=1):
        assert feats[i].shape == (len(keys), m.shape[1])
        np.testing.assert_allclose(feats[i], m.numpy(), rtol=1e-4, atol=1e-5)


def _captions(keys):
    out = []
    for k in keys:
        rng = np.random.default_rng(k)  # captions depend on the key only
        n = 1 + k % 3
        out.append([" ".join(rng.choice(WORDS, size=2 + (k + j) % 5)) for j in range(n)])
    return out


@pytest.mark.parametrize("name", ["gpt2", "opt"])
def test_language_features_match_manual_forward(language_models, tmp_path, name):
    path = language_models[name]
    keys = [1, 2, 5, 8]
    feats = hidden.language_layer_features(path, _captions, keys, tmp_path / "c.h5",
                                           batch_size=3, device="cpu")
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    blocks = model.transformer.h if name == "gpt2" else model.model.decoder.layers
    # the last block's output gets the final layer norm in hidden_states: compare the others
    for row, caps in enumerate(_captions(keys)):
        per_caption = []
        for cap in caps:  # one caption at a time: no padding at all
            ids = tok(cap, return_tensors="pt")["input_ids"]
            assert ids[0, 0] == tok.bos_token_id
            outs = _block_outputs(model, blocks, input_ids=ids)
            per_caption.append([o[0, 1:].mean(dim=0).numpy() for o in outs])  # BOS excluded
        for layer in range(1, len(blocks)):
            expected = np.mean([pc[layer - 1] for pc in per_caption], axis=0)
            np.testing.assert_allclose(feats[layer][row], expected, rtol=1e-4, atol=1e-5)


def test_layer_subset_and_selection(vision_models, tmp_path):
    assert hidden.select_layers(13, 3) == [0, 6, 12]
    assert hidden.select_layers(5, [-1, 0, 0]) == [0, 4]
    with pytest.raises(ValueError, match="does not exist"):
        hidden.select_layers(5, [7])
    full = hidden.vision_layer_features(vision_models["vit"], _images, [0, 1, 2],
                                        tmp_path / "a.h5", device="cpu")
    sub = hidden.vision_layer_features(vision_models["vit"], _images, [0, 1, 2],
                                       tmp_path / "b.h5", layers=[0, -1], device="cpu")
    assert sorted(sub) == [0, 3]
    np.testing.assert_allclose(sub[3], full[3], rtol=1e-5, atol=1e-6)


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing folder"):
        hidden.load_vision_model(tmp_path / "nowhere" / "model", device="cpu")


def test_cache_follows_model_changes(vision_models, tmp_path):
    import shutil

    entry = {"name": "vit", "path": str(tmp_path / "vit"), "modality": "vision"}
    shutil.copytree(vision_models["vit"], tmp_path / "vit")

    class _Images:
        images = staticmethod(_images)

    first = hidden.model_layer_features(entry, _Images, [0, 1], tmp_path / "cache", device="cpu")
    # retrain = new weights in the same folder: the old cache must not be reused
    torch.manual_seed(1)
    model = transformers.AutoModel.from_pretrained(tmp_path / "vit")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "vit")
    second = hidden.model_layer_features(entry, _Images, [0, 1], tmp_path / "cache",
                                         device="cpu")
    assert not np.allclose(first[3], second[3])
    assert len(list((tmp_path / "cache").glob("vision_vit_*.h5"))) == 2


def test_rows_for_finds_unsorted_keys_and_names_missing_ones():
    from lib.features.cache import rows_for

    keys = np.array([30, 10, 20])
    np.testing.assert_array_equal(rows_for(keys, [20, 30, 10, 20]), [2, 0, 1, 2])
    with pytest.raises(KeyError, match="1 ids have no features"):
        rows_for(keys, [10, 99])


def test_grid_pooling_averages_each_cell_of_tokens_and_feature_maps():
    from types import SimpleNamespace

    config = SimpleNamespace(image_size=16, patch_size=4)  # a 4 x 4 patch grid + CLS
    patches = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)
    tokens = torch.cat([torch.full((2, 1, 3), -1e6), patches], dim=1)
    out = hidden.pool_hidden_state(tokens, config, "grid2")
    assert out.shape == (2, 3 * 2 * 2)
    grid = patches.reshape(2, 4, 4, 3)  # row-major patches: (batch, row, col, channel)
    top_left = grid[:, :2, :2].mean(dim=(1, 2))  # (2, 3)
    bottom_right = grid[:, 2:, 2:].mean(dim=(1, 2))
    cells = out.reshape(2, 3, 2, 2)  # channel-major, then rows, then columns
    torch.testing.assert_close(cells[:, :, 0, 0], top_left)
    torch.testing.assert_close(cells[:, :, 1, 1], bottom_right)
    # grid1 is the plain mean; a conv map pools the same way
    torch.testing.assert_close(hidden.pool_hidden_state(tokens, config, "grid1"),
                               hidden.pool_hidden_state(tokens, config, "mean"))
    fmap = grid.permute(0, 3, 1, 2)
    torch.testing.assert_close(hidden.pool_hidden_state(fmap, config, "grid2"), out)


@pytest.mark.parametrize("bad", ["grid", "grid0", "max", "gridx"])
def test_unknown_pooling_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="pooling must be"):
        hidden.parse_pooling(bad)
