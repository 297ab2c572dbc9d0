"""Loading of vision models and causal language models for feature extraction.

A model is a Hugging Face hub id or a local ``save_pretrained`` folder; on CUDA the weights are
loaded in bfloat16 (or 8 / 4 bits for language models, see
:func:`lib.features.sources.quantization_kwargs`).
"""

from __future__ import annotations

from pathlib import Path

#: Config model types whose ``AutoModel`` holds a vision tower under ``vision_model``.
_DUAL_ENCODERS = ("clip", "siglip", "siglip2", "blip", "blip-2", "align", "altclip")


def _load_kwargs(device):
    import torch

    return {"dtype": torch.bfloat16} if device.type == "cuda" else {}


def _check_local_or_hub(path) -> str:
    """A model reference as a string: an existing folder, or something shaped like a hub id."""
    from lib.features.sources import is_hub_id

    local = Path(str(path)).expanduser()
    if local.exists():
        return str(local)
    text = str(path)
    if is_hub_id(text):
        return text  # hub id such as "facebook/dinov2-small"
    raise FileNotFoundError(
        f"Model {text!r} is neither an existing folder nor a Hugging Face hub id "
        "('org/name'). Build the toy world (python -m lib.toyworld build) or fix the zoo path."
    )


def load_vision_model(path, device="auto"):
    """Load a vision model and its image processor for feature extraction.

    Parameters
    ----------
    path : str or path-like
        Hugging Face hub id or local folder saved with ``save_pretrained``.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    model : torch.nn.Module
        In eval mode on ``device`` (bfloat16 weights on CUDA); for dual encoders (CLIP, ...)
        the vision tower only. MAE's random patch masking is switched off.
    processor : transformers image processor
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    from lib.config import resolve_device

    device = resolve_device(device)
    ref = _check_local_or_hub(path)
    config = AutoConfig.from_pretrained(ref)
    if hasattr(config, "mask_ratio"):  # MAE: see every patch, no random masking
        config.mask_ratio = 0.0
    model = AutoModel.from_pretrained(ref, config=config, **_load_kwargs(device))
    if config.model_type in _DUAL_ENCODERS and hasattr(model, "vision_model"):
        model = model.vision_model
    processor = AutoImageProcessor.from_pretrained(ref)
    return model.eval().to(device), processor


def load_language_model(path, device="auto", quantize=None):
    """Load a causal language model and its tokenizer (padding on the right).

    Parameters
    ----------
    path : str or path-like
        Hugging Face hub id or local folder.
    device : str
    quantize : {None, "8bit", "4bit"}
        Load the weights in 8 or 4 bits with bitsandbytes (CUDA only; the ``[gpu]`` extra), as
        the original study loaded its 13B models; ``None``: bfloat16 on CUDA, float32 on CPU.

    Returns
    -------
    model : torch.nn.Module
        In eval mode on ``device`` (bfloat16 weights on CUDA, unless quantized).
    tokenizer : transformers tokenizer
        A pad token is set to the EOS token when the tokenizer has none.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lib.config import resolve_device
    from lib.features.sources import quantization_kwargs

    device = resolve_device(device)
    ref = _check_local_or_hub(path)
    quantized = quantization_kwargs(quantize, device)
    tokenizer = AutoTokenizer.from_pretrained(ref)  # first: a missing tokenizer library fails fast
    model = AutoModelForCausalLM.from_pretrained(ref, **(quantized or _load_kwargs(device)))
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"Tokenizer of {path!r} has neither a pad nor an EOS token.")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = model.eval()
    return (model if quantized else model.to(device)), tokenizer  # quantized: already placed
