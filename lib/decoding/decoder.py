"""The stage-1 decoder and its files: the map fMRI -> query tokens, its weights and settings, the
predictions of a decoding run, and the guard that keeps test images out of training.

A :class:`QueryTokenDecoder` (a ``torch.nn.Module``) is saved as ``decoder.safetensors`` with
``settings.json`` beside it (:meth:`QueryTokenDecoder.save`, :func:`load_decoder`); a run's
predictions go to ``predictions.h5`` (:func:`write_predictions`, :func:`read_predictions`;
described in ``book/reference/files.md``): ``test/pred`` (n_test, n_query, hidden),
``test/nsd_id``, ``train/pred``, ``train/nsd_id``. Stage 2 (``contrastive``) starts from such a
decoder; :func:`assert_no_test_ids` is called wherever a split is made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lib.io import atomic_path, write_json

DECODER_FILE = "decoder.safetensors"
SETTINGS_FILE = "settings.json"
PREDICTIONS_FILE = "predictions.h5"


class LeakageError(AssertionError):
    """A test image reached training, alpha selection, validation or early stopping."""


def assert_no_test_ids(ids, test_ids, where: str) -> None:
    """Raise :class:`LeakageError` if any id of ``ids`` is a test image.

    Parameters
    ----------
    ids : array-like of int
        Image ids used by some training step (training samples, alpha selection, validation,
        early stopping).
    test_ids : array-like of int
        The held-out test images (NSD shared images).
    where : str
        Name of the place being checked, for the message.
    """
    leaked = np.intersect1d(np.asarray(ids).ravel(), np.asarray(test_ids).ravel())
    if leaked.size:
        raise LeakageError(
            f"{leaked.size} test image(s) found in {where} (e.g. nsd ids {leaked[:5].tolist()}); "
            "test images must never touch training, alpha selection, validation or early "
            "stopping."
        )


class QueryTokenDecoder(nn.Module):
    """Linear map from fMRI (one or several blocks of voxels) to Q-Former query tokens.

    Parameters
    ----------
    block_sizes : list of int
        Number of voxels in each input block (one block per trial of the memory window;
        block 0 is the trial itself).
    n_query, hidden : int
        Output shape per sample.
    settings : dict or None
        JSON-serialisable description (memory size, ROI, alphas ...), saved with the
        weights.
    """

    def __init__(self, block_sizes: Sequence[int], n_query: int, hidden: int,
                 settings: dict | None = None):
        super().__init__()
        self.block_sizes = [int(b) for b in block_sizes]
        self.n_query, self.hidden = int(n_query), int(hidden)
        self.settings = dict(settings or {})
        n_out = self.n_query * self.hidden
        self.weight = nn.Parameter(torch.zeros(n_out, sum(self.block_sizes)))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        """Map fMRI to query tokens.

        Parameters
        ----------
        x : Tensor of shape (n, n_voxels) or list of Tensors of shape (n, block_size)

        Returns
        -------
        query_tokens : Tensor of shape (n, n_query, hidden)
        """
        blocks = list(x) if isinstance(x, (list, tuple)) else [x]
        if [b.shape[1] for b in blocks] != self.block_sizes:
            raise ValueError(
                f"expected input blocks of {self.block_sizes} voxels, got "
                f"{[tuple(b.shape) for b in blocks]}: use the same ROI and memory window "
                "as when the decoder was fitted"
            )
        out = self.bias
        start = 0
        for b in blocks:
            w = self.weight[:, start : start + b.shape[1]]
            out = out + b.to(w.dtype) @ w.T
            start += b.shape[1]
        return out.reshape(-1, self.n_query, self.hidden)

    def predict(self, x, batch_size: int = 512) -> np.ndarray:
        """Numpy in, numpy out, in batches.

        Parameters
        ----------
        x : ndarray of shape (n, n_voxels) or list of such blocks

        Returns
        -------
        query_tokens : ndarray of shape (n, n_query, hidden), float32
        """
        blocks = list(x) if isinstance(x, (list, tuple)) else [x]
        dev = self.weight.device
        n = len(blocks[0])
        out = []
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                xb = [torch.as_tensor(np.asarray(b[s : s + batch_size], np.float32), device=dev)
                      for b in blocks]
                out.append(self(xb).float().cpu().numpy())
        return (np.concatenate(out) if out
                else np.zeros((0, self.n_query, self.hidden), np.float32))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``decoder.safetensors`` and ``settings.json`` into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / DECODER_FILE) as tmp:
            save_file({"weight": self.weight.detach().cpu().contiguous(),
                       "bias": self.bias.detach().cpu().contiguous()}, str(tmp))
        write_json(folder / SETTINGS_FILE, {
            "block_sizes": self.block_sizes, "n_query": self.n_query,
            "hidden": self.hidden, **self.settings,
        })
        return folder



def load_decoder(folder: str | os.PathLike, device: str = "cpu"):
    """Load a decoder written by ``QueryTokenDecoder.save``.

    Parameters
    ----------
    folder : path-like
        Holds ``decoder.safetensors`` and ``settings.json``.
    device : str

    Returns
    -------
    decoder : QueryTokenDecoder
        In eval mode on ``device``; ``decoder.settings`` holds the saved settings.
    """
    from safetensors.torch import load_file

    from lib.config import resolve_device

    folder = Path(folder)
    if not (folder / DECODER_FILE).exists() or not (folder / SETTINGS_FILE).exists():
        raise FileNotFoundError(
            f"{folder} has no {DECODER_FILE} + {SETTINGS_FILE}: run notebooks/03_alignment_ridge "
            "for this run first."
        )
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    block_sizes = settings.pop("block_sizes")
    n_query, hidden = settings.pop("n_query"), settings.pop("hidden")
    dec = QueryTokenDecoder(block_sizes, n_query, hidden, settings)
    dec.load_state_dict(load_file(str(folder / DECODER_FILE)))
    return dec.eval().to(resolve_device(device))


def write_predictions(path: str | os.PathLike, test_pred: np.ndarray, test_ids: np.ndarray,
                      train_pred: np.ndarray | None = None,
                      train_ids: np.ndarray | None = None) -> Path:
    """Write ``predictions.h5`` (the decoding-run contract) atomically.

    Parameters
    ----------
    path : path-like
    test_pred : ndarray of shape (n_test, n_query, hidden)
    test_ids : ndarray of shape (n_test,)
    train_pred : ndarray of shape (n_train, n_query, hidden) or None
    train_ids : ndarray of shape (n_train,) or None
    """
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f["test/pred"] = np.asarray(test_pred, np.float32)
        f["test/nsd_id"] = np.asarray(test_ids, np.int64)
        if train_pred is not None:
            f["train/pred"] = np.asarray(train_pred, np.float32)
            f["train/nsd_id"] = np.asarray(train_ids, np.int64)
    return Path(path)


def read_predictions(path: str | os.PathLike) -> dict:
    """Read a decoding run's ``predictions.h5`` (file or its run folder).

    Returns
    -------
    predictions : dict
        ``test_pred`` (n_test, n_query, hidden), ``test_ids``; ``train_pred``, ``train_ids``
        when present.
    """
    import h5py

    path = Path(path)
    if path.is_dir():
        path = path / PREDICTIONS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the decoding stage that writes it first.")
    out = {}
    with h5py.File(path, "r") as f:
        for split in ("test", "train"):
            if f"{split}/pred" in f:
                out[f"{split}_pred"] = f[f"{split}/pred"][()]
                out[f"{split}_ids"] = f[f"{split}/nsd_id"][()]
    return out
