"""Where a model comes from, without network access: a local folder or the Hugging Face hub cache.

Used before any weights are loaded: by the preflight (:mod:`lib.preflight`), which says which
models of a parameter set are missing, and by the convergence analysis, which skips a gated
model when no hub login is configured and reports why any model failed
(:func:`failure_hint`). Also the options of 8-bit / 4-bit loading (:func:`quantization_kwargs`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

#: Weight files of a ``save_pretrained`` folder (single file or the index of a sharded one).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
QUANTIZE_OPTIONS = (None, "8bit", "4bit")
_GPU_EXTRA = "pip install -e '.[gpu]' (bitsandbytes)"


@dataclass
class ModelLocation:
    """Where a model reference resolves to.

    ``kind`` is ``"local"`` (a folder), ``"hub-cache"`` (a hub id whose files are in the local
    cache) or ``"missing"``; ``path`` the folder holding ``config.json`` (None when missing);
    ``problem`` what is wrong (None when usable).
    """

    ref: str
    kind: str
    path: str | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def is_hub_id(ref) -> bool:
    """Whether ``ref`` is shaped like a hub id (``"org/name"``) rather than a path."""
    text = str(ref)
    return text.count("/") == 1 and not text.startswith((".", "/", "~"))


def _folder_problem(folder: Path) -> str | None:
    """What keeps ``folder`` from loading with ``from_pretrained`` (None if nothing)."""
    config = folder / "config.json"
    if not config.is_file():
        return f"{folder} has no config.json"
    try:
        json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        return f"{config} is not valid JSON ({err})"
    present = [folder / f for f in WEIGHT_FILES if (folder / f).is_file()]
    if not present:
        return f"{folder} holds no weights (expected one of {', '.join(WEIGHT_FILES)})"
    if present[0].name.endswith(".index.json"):
        try:
            shards = set(json.loads(present[0].read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError) as err:
            return f"{present[0]} is not a weight index ({err})"
        absent = sorted(s for s in shards if not (folder / s).is_file())
        if absent:
            return f"{folder} lacks {len(absent)} weight shard(s), e.g. {absent[0]}"
    return None


def locate_model(ref, cache_dir=None) -> ModelLocation:
    """Resolve a model reference offline.

    Parameters
    ----------
    ref : str or path-like
        A local folder saved with ``save_pretrained``, or a hub id such as
        ``"Salesforce/blip2-opt-2.7b"``.
    cache_dir : path-like or None
        Hub cache folder; default the hub's own (``$HF_HUB_CACHE``, ``~/.cache/huggingface/hub``).

    Returns
    -------
    location : ModelLocation
    """
    from huggingface_hub import try_to_load_from_cache

    text = str(ref)
    local = Path(text).expanduser()
    if local.exists():
        return ModelLocation(text, "local", str(local), _folder_problem(local))
    if not is_hub_id(text):
        return ModelLocation(text, "missing", None,
                             f"{text} is neither an existing folder nor a hub id ('org/name')")
    config = try_to_load_from_cache(text, "config.json", cache_dir=cache_dir)
    if not isinstance(config, str):
        return ModelLocation(text, "missing", None, f"{text} is not in the Hugging Face hub cache")
    folder = Path(config).parent
    return ModelLocation(text, "hub-cache", str(folder), _folder_problem(folder))


def hub_token_configured() -> bool:
    """Whether a Hugging Face token is configured (``hf auth login`` or ``$HF_TOKEN``)."""
    from huggingface_hub import get_token

    return get_token() is not None


def gated_hint(ref) -> str:
    """What to do to use a gated hub model."""
    return (f"gated: accept the licence at https://huggingface.co/{ref}, then run "
            f"`hf auth login` (or set HF_TOKEN) and `hf download {ref}`")


def failure_hint(err: BaseException, ref) -> str:
    """A hint for a model that failed to load or run, from the error's type and message.

    Parameters
    ----------
    err : BaseException
    ref : str
        The model's hub id or folder.

    Returns
    -------
    hint : str
    """
    text = f"{type(err).__name__} {err}".lower()
    if "tiktoken" in text:  # transformers' fallback when a SentencePiece model cannot be read
        return ("pip install sentencepiece protobuf (a SentencePiece tokenizer such as LLaMA's "
                "needs both; declared dependencies: reinstall the environment)")
    if "sentencepiece" in text:
        return "pip install sentencepiece (a declared dependency: reinstall the environment)"
    if "protobuf" in text:
        return "pip install protobuf (a declared dependency: reinstall the environment)"
    if "bitsandbytes" in text:
        return _GPU_EXTRA
    if "out of memory" in text or type(err).__name__ == "OutOfMemoryError":
        return ("out of memory: set convergence_layers (fewer layers), a smaller "
                "convergence_batch_size, or convergence_quantize: 8bit / 4bit")
    if any(word in text for word in ("gated", "401 client error", "403 client error",
                                     "unauthorized")):
        return gated_hint(ref)
    if isinstance(err, (ValueError, OSError)) and "config" in text:
        return f"the model's configuration could not be read: fix or re-download {ref}"
    if isinstance(err, (OSError, FileNotFoundError)):
        location = locate_model(ref)
        if not location.ok:
            fix = f"`hf download {ref}`" if is_hub_id(ref) else "fix the zoo path"
            return f"{location.problem}: {fix}"
    return "see the error; the other models ran without it"


def quantization_kwargs(quantize, device) -> dict:
    """``from_pretrained`` keyword arguments for 8-bit / 4-bit loading with bitsandbytes.

    Parameters
    ----------
    quantize : {None, "8bit", "4bit"}
        ``None`` loads full weights (bfloat16 on CUDA).
    device : torch.device
        Must be CUDA when ``quantize`` is set.

    Returns
    -------
    kwargs : dict
        Empty for ``None``; else ``quantization_config`` and ``device_map``.

    Raises
    ------
    ValueError
        Unknown option, or quantization asked for on a CPU.
    ImportError
        bitsandbytes is not installed (names the ``[gpu]`` extra).
    """
    if quantize not in QUANTIZE_OPTIONS:
        raise ValueError(f"convergence_quantize={quantize!r}: expected one of {QUANTIZE_OPTIONS}.")
    if quantize is None:
        return {}
    if device.type != "cuda":
        raise ValueError(f"convergence_quantize={quantize!r} needs a CUDA GPU (bitsandbytes), "
                         f"but the device is {device}; set convergence_quantize: null.")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"convergence_quantize={quantize!r} needs bitsandbytes: {_GPU_EXTRA}.")
    import torch
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:  # 4-bit NF4 with bfloat16 compute, as the original study loaded its 13B models
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_compute_dtype=torch.bfloat16)
    return {"quantization_config": config, "device_map": {"": device.index or 0},
            "dtype": torch.bfloat16}
