"""The toy vision zoo: two families (ViT, ResNet) at three sizes, trained on the scenes.

Each model is a standard ``*ForImageClassification`` trained with a multi-label objective on
the scenes' ground truth (place, object kinds, colours, number of objects, kind-colour pairs,
and which kinds and colours sit in each cell of a 3x3 grid; see
:func:`lib.toyworld.models.data.scene_labels`). Saved with ``save_pretrained`` beside an
image processor, each loads by path with ``AutoModel.from_pretrained(path,
output_hidden_states=True)`` and ``AutoImageProcessor.from_pretrained(path)``. Untrained
copies (same configuration, random weights) serve as baselines.
"""

from __future__ import annotations

import numpy as np

from ._train import seeded_init, train_epochs


def _vit(size: dict, image_size: int, n_labels: int, names: list[str]):
    from transformers import ViTConfig, ViTForImageClassification

    h = size["hidden"]
    config = ViTConfig(
        hidden_size=h, num_hidden_layers=size["layers"], num_attention_heads=max(h // 24, 1),
        intermediate_size=4 * h, image_size=image_size, patch_size=size.get("patch", 8),
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=n_labels,
        problem_type="multi_label_classification",
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )
    return ViTForImageClassification, config


def _resnet(size: dict, image_size: int, n_labels: int, names: list[str]):
    from transformers import ResNetConfig, ResNetForImageClassification

    w = size["width"]
    config = ResNetConfig(
        embedding_size=w, hidden_sizes=[w, 2 * w, 4 * w, 8 * w], depths=size["depths"],
        layer_type="basic", num_labels=n_labels, problem_type="multi_label_classification",
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )
    return ResNetForImageClassification, config


_FAMILIES = {"vit": _vit, "resnet": _resnet}


def image_processor(family: str, image_size: int):
    """The image processor saved beside a zoo model (PIL backend; no torchvision needed)."""
    if family == "vit":
        from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

        return ViTImageProcessorPil(size={"height": image_size, "width": image_size})
    if family == "resnet":
        from transformers.models.convnext.image_processing_pil_convnext import (
            ConvNextImageProcessorPil,
        )

        return ConvNextImageProcessorPil(size={"shortest_edge": image_size}, crop_pct=1.0)
    raise ValueError(f"unknown vision family {family!r}; expected one of {sorted(_FAMILIES)}")


def build_vision_model(family: str, size: dict, image_size: int, seed: int, stream: int):
    """A freshly initialised zoo model (random weights from a fixed seed stream)."""
    from .data import label_names

    names = label_names()
    cls, config = _FAMILIES[family](size, image_size, len(names), names)
    return seeded_init(cls, config, seed, stream)


def train_vision_model(model, pixels, labels, spec: dict, seed: int, stream: int, desc: str):
    """Multi-label training (binary cross-entropy on every scene label).

    Parameters
    ----------
    model : ViTForImageClassification or ResNetForImageClassification
    pixels : FloatTensor of shape (n, 3, S, S)
        Output of the model's own image processor.
    labels : FloatTensor of shape (n, n_labels)
    spec : dict
        ``epochs``, ``batch``, ``lr``.

    Returns
    -------
    history : dict
        ``loss`` per step and ``seconds``.
    """
    rng = np.random.default_rng([int(seed), 3000 + int(stream)])
    model.train()
    history = train_epochs(
        lambda idx: model(pixel_values=pixels[idx], labels=labels[idx]).loss,
        model.parameters(), len(pixels), spec["batch"], spec["epochs"], spec["lr"], rng, desc,
        weight_decay=0.05)
    model.eval()
    return history


def evaluate_vision_model(model, pixels, labels) -> dict:
    """Held-out BCE loss and mean average precision over labels present in the held-out set."""
    import torch
    from sklearn.metrics import average_precision_score

    with torch.inference_mode():
        logits = torch.cat([model(pixel_values=pixels[i : i + 256]).logits
                            for i in range(0, len(pixels), 256)])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    y, s = labels.numpy(), logits.numpy()
    keep = (y.sum(0) > 0) & (y.sum(0) < len(y))
    mean_ap = (float(average_precision_score(y[:, keep], s[:, keep], average="macro"))
               if keep.any() else float("nan"))
    return {"val_loss": float(loss), "val_mAP": mean_ap}
