"""Stage-2 data: (brain sample, caption) pairs, split by image, with the leakage checks.

The split is made here and checked here: validation images are carved out of the *training*
images (:func:`split_train_val`, whole images, never trials), and :func:`check_split` asserts
that no test image is a training or validation pair and that no image is on both sides.
:func:`stage2_data` builds every array stage 2 trains and predicts on and runs the check;
:func:`lib.decoding.loop.fit` runs it again on the pairs it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lib.decoding.decoder import LeakageError, assert_no_test_ids


def split_train_val(image_ids, val_fraction: float = 0.1, seed: int = 0):
    """Carve a validation set out of the training images (whole images, never trials).

    Parameters
    ----------
    image_ids : array-like of int
        Unique training image ids.
    val_fraction : float
        Share of images held out for validation (at least one image is held out and one kept).
    seed : int

    Returns
    -------
    train_ids, val_ids : ndarray of int
        Sorted, disjoint.
    """
    ids = np.unique(np.asarray(image_ids))
    if ids.size < 2:
        raise ValueError("need at least two training images to carve out a validation set")
    n_val = min(max(1, round(val_fraction * ids.size)), ids.size - 1)
    perm = np.random.default_rng(seed).permutation(ids.size)
    val = np.sort(ids[perm[:n_val]])
    train = np.sort(ids[perm[n_val:]])
    return train, val


def check_split(train_ids, val_ids, test_ids) -> None:
    """Raise :class:`~lib.decoding.decoder.LeakageError` unless the three image sets are disjoint.

    Parameters
    ----------
    train_ids : array-like of int
        Image of every training pair (or sample).
    val_ids : array-like of int
        Image of every validation (early-stopping) pair.
    test_ids : array-like of int
        The test images.
    """
    assert_no_test_ids(train_ids, test_ids, "the training pairs")
    assert_no_test_ids(val_ids, test_ids, "the validation (early-stopping) pairs")
    overlap = np.intersect1d(np.asarray(train_ids), np.asarray(val_ids))
    if overlap.size:
        raise LeakageError(f"{overlap.size} image(s) are in both training and validation pairs")


@dataclass
class PairData:
    """(brain sample, caption) pairs for contrastive training.

    Attributes
    ----------
    X : Tensor of shape (n_samples, n_features), float32
        Brain samples (repetition-averaged betas, or single trials with memory windows).
    tokens : Tensor of shape (n_samples, n_query, hidden), float32
        True Q-Former outputs of each sample's image.
    image_ids : LongTensor of shape (n_samples,)
        NSD id of each sample's image.
    pairs : LongTensor of shape (n_pairs, 2)
        ``(sample index, caption index)``: every caption of the sample's image.
    captions : list of str, length n_captions
    text_feats : Tensor of shape (n_captions, dim) or None
        Precomputed normalised caption embeddings (frozen text side).
    """

    X: torch.Tensor
    tokens: torch.Tensor
    image_ids: torch.Tensor
    pairs: torch.Tensor
    captions: list
    text_feats: torch.Tensor | None = None

    @classmethod
    def build(cls, X, tokens, image_ids, captions_by_image: dict) -> PairData:
        """Pair every sample with every caption of its image.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features)
        tokens : ndarray of shape (n_samples, n_query, hidden)
        image_ids : ndarray of shape (n_samples,)
        captions_by_image : dict
            nsd id (int) -> list of captions.
        """
        image_ids = np.asarray(image_ids, dtype=np.int64)
        if not (len(X) == len(tokens) == len(image_ids)):
            raise ValueError(
                f"X, tokens and image_ids must have the same length; got {len(X)}, "
                f"{len(tokens)}, {len(image_ids)}"
            )
        captions: list[str] = []
        first: dict[int, tuple[int, int]] = {}
        for nsd in np.unique(image_ids):
            caps = list(captions_by_image.get(int(nsd), []))
            if not caps:
                raise ValueError(f"image nsd_id={int(nsd)} has no caption; cannot pair it")
            first[int(nsd)] = (len(captions), len(caps))
            captions.extend(caps)
        pairs = [
            (i, start + c)
            for i, nsd in enumerate(image_ids)
            for start, n in [first[int(nsd)]]
            for c in range(n)
        ]
        return cls(
            X=torch.as_tensor(np.asarray(X, dtype=np.float32)),
            tokens=torch.as_tensor(np.asarray(tokens, dtype=np.float32)),
            image_ids=torch.as_tensor(image_ids),
            pairs=torch.as_tensor(np.asarray(pairs, dtype=np.int64)).reshape(-1, 2),
            captions=captions,
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, idx: torch.Tensor, device) -> dict:
        """Tensors of the pairs ``idx`` on ``device``.

        Returns
        -------
        batch : dict
            ``X`` (n, n_features), ``true_tokens`` (n, n_query, hidden), ``image_ids`` (n,), and
            ``text_feats`` (n, dim) when precomputed, else ``caption_index`` (n,) (on the host).
        """
        s, c = self.pairs[idx, 0], self.pairs[idx, 1]
        out = {
            "X": self.X[s].to(device),
            "true_tokens": self.tokens[s].to(device),
            "image_ids": self.image_ids[s].to(device),
        }
        if self.text_feats is not None:
            out["text_feats"] = self.text_feats[c].to(device)
        else:
            out["caption_index"] = c
        return out


@dataclass
class Stage2Data:
    """Everything stage 2 trains and predicts on, with the splits checked.

    :func:`stage2_data` fills every field; :func:`lib.decoding.fit` needs only ``train``,
    ``val`` and ``test_ids`` (e.g. ``Stage2Data(train, val, test_ids=ids)``).

    Attributes
    ----------
    train, val : PairData
        Pairs of the training images and of the validation images carved from them.
    X_test : ndarray of shape (n_test_samples, n_features)
        Test brain samples (memory blocks side by side), for prediction only.
    test_sample_ids : ndarray of shape (n_test_samples,)
    X_train : ndarray of shape (n_train_samples, n_features)
        All training samples (train + validation images), for in-sample predictions.
    train_sample_ids : ndarray of shape (n_train_samples,)
    test_ids : ndarray
        The subject's test images (never used above except for prediction).
    val_ids : ndarray
        The validation images.
    """

    train: PairData
    val: PairData
    X_test: np.ndarray | None = None
    test_sample_ids: np.ndarray | None = None
    X_train: np.ndarray | None = None
    train_sample_ids: np.ndarray | None = None
    test_ids: np.ndarray | None = None
    val_ids: np.ndarray | None = None


def stage2_data(subject, features, feature_ids, memory_size: int = 1,
                memory_direction: str = "past", roi: str | None = None,
                val_fraction: float = 0.1, seed: int = 0) -> Stage2Data:
    """Brain samples, true query tokens and captions for stage 2, split by image.

    The inputs are built exactly as stage 1 builds them
    (:func:`lib.decoding.stage1.stage1_inputs`: averaged betas for ``memory_size=1``, single
    trials with their memory window otherwise); validation images are drawn from the training
    images (:func:`split_train_val`); no test image enters ``train`` or ``val`` and no image is
    in both (:func:`check_split`).

    Parameters
    ----------
    subject : lib.nsd.PreparedSubject
    features : ndarray of shape (n_images, n_query, hidden)
    feature_ids : ndarray of shape (n_images,)
    memory_size, memory_direction, roi
        As for stage 1 (must match the stage-1 decoder that is fine-tuned).
    val_fraction : float
    seed : int

    Returns
    -------
    data : Stage2Data
    """
    from lib.decoding.stage1 import lookup_features, stage1_inputs

    test_ids = np.asarray(subject.image_ids("test"))
    blocks, ids = stage1_inputs(subject, "train", memory_size, memory_direction, roi)
    assert_no_test_ids(ids, test_ids, "the stage-2 training samples")
    tr_img, val_img = split_train_val(np.unique(ids), val_fraction, seed)
    # training samples first, validation samples after: both parts are views of one array
    order = np.argsort(~np.isin(ids, tr_img), kind="stable")
    n_tr = int(np.isin(ids, tr_img).sum())
    X, ids = _stack_blocks(blocks, order), ids[order]
    del blocks
    tokens = lookup_features(np.asarray(features, np.float32), np.asarray(feature_ids), ids)
    caps = dict(zip((int(i) for i in np.unique(ids)), subject.captions(np.unique(ids))))
    parts = [PairData.build(X[sl], tokens[sl], ids[sl], caps)
             for sl in (slice(0, n_tr), slice(n_tr, None))]
    check_split(parts[0].image_ids.numpy(), parts[1].image_ids.numpy(), test_ids)
    tblocks, tids = stage1_inputs(subject, "test", memory_size, memory_direction, roi)
    X_test = _stack_blocks(tblocks)
    return Stage2Data(parts[0], parts[1], X_test, np.asarray(tids), X, np.asarray(ids),
                      test_ids, val_img)


def _stack_blocks(blocks: list, order=None) -> np.ndarray:
    """Memory blocks side by side in one float32 array (rows in ``order``), releasing each
    block once copied: the peak is the result plus one block, not twice the result.

    Parameters
    ----------
    blocks : list of ndarray of shape (n, p_b)
        Emptied by this call.
    order : ndarray of shape (n,) or None

    Returns
    -------
    X : ndarray of shape (n, sum p_b), float32
    """
    n = len(blocks[0])
    X = np.empty((n, sum(b.shape[1] for b in blocks)), np.float32)
    start = 0
    while blocks:
        b = blocks.pop(0)
        X[:, start:start + b.shape[1]] = b if order is None else b[order]
        start += b.shape[1]
        del b
    return X
