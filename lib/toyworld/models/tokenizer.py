"""A word-level tokenizer for the toy captions, in Hugging Face format.

The toy captions use a small closed vocabulary, so one token per (lower-cased) word or
punctuation mark is enough. The tokenizer is a :class:`transformers.PreTrainedTokenizerFast`
(saved as ``tokenizer.json``), so ``AutoTokenizer.from_pretrained(path)`` loads it offline,
like the real checkpoints' tokenizers.

Conventions follow OPT's tokenizer: a beginning-of-sequence token is prepended to every
encoded text, no end-of-sequence token is appended (the captioning model learns to emit it).
The BLIP-2 image placeholder ``<image>`` is a special token of its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

#: Special tokens, in id order (their ids are 0..4).
PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE)


def _pre_tokenizer():
    from tokenizers import normalizers, pre_tokenizers

    return normalizers.Lowercase(), pre_tokenizers.Whitespace()


def caption_words(texts: Iterable[str]) -> Counter:
    """Count the words of ``texts`` as the tokenizer splits them (lower case, punctuation apart).

    Upper-case strings of two or more letters (the random letters written on ``word``
    objects, e.g. "FGVP") are not counted: they would flood the vocabulary with one-off
    tokens; they encode as ``<unk>``.

    Parameters
    ----------
    texts : iterable of str

    Returns
    -------
    counts : collections.Counter
        Word -> number of occurrences.
    """
    norm, pre = _pre_tokenizer()
    counts: Counter = Counter()
    for text in texts:
        words = (w for w, _ in pre.pre_tokenize_str(text))
        counts.update(norm.normalize_str(w) for w in words if not (len(w) > 1 and w.isupper()))
    return counts


def build_tokenizer(texts: Iterable[str], min_count: int = 1):
    """Build the word-level tokenizer from a corpus of captions.

    Parameters
    ----------
    texts : iterable of str
        Captions; every word seen at least ``min_count`` times gets a token.
    min_count : int
        Rarer words map to ``<unk>``.

    Returns
    -------
    tokenizer : transformers.PreTrainedTokenizerFast
        With ``bos_token``, ``eos_token``, ``pad_token``, ``unk_token`` and ``image_token``
        (``<image>``, the BLIP-2 placeholder); the vocabulary is sorted so the same corpus
        always gives the same ids.
    """
    from tokenizers import Tokenizer, decoders, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    counts = caption_words(texts)
    words = sorted(w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS)
    if not words:
        raise ValueError("build_tokenizer: the caption corpus is empty; pass at least one caption.")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab[w] = len(vocab)

    norm, pre = _pre_tokenizer()
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = norm
    core.pre_tokenizer = pre
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[IMAGE],
        padding_side="right",
        model_max_length=64,
        clean_up_tokenization_spaces=True,
    )
    return tok
