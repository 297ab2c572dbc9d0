"""Caption metrics with the COCO caption evaluation toolkit (pycocoevalcap).

BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D) are computed by pycocoevalcap's own scorers on
captions tokenized by the Stanford PTB tokenizer it ships, exactly as in the COCO caption
evaluation server. Two thin runners replace pycocoevalcap's Java wrappers so that they are
robust in a long-running analysis (the scores are identical, which the tests check):

- the PTB tokenizer writes its temporary file to the system temporary folder (pycocoevalcap
  writes into its own package folder, which may be read-only), and reads and writes UTF-8;
- METEOR runs in a context-managed Java subprocess that is always closed, speaks the same
  ``SCORE``/``EVAL`` protocol as pycocoevalcap's wrapper, and streams all segments in one
  go (a writer thread avoids pipe dead-locks), which keeps ~1,000 captions to a few seconds.

Captions are sanitized before scoring: Unicode NFKC normalization, every line break,
tab or control character becomes a space, ``|`` (METEOR's field separator) becomes a
space, and runs of spaces collapse. On ordinary captions this is the identity.

Scales are pycocoevalcap's own: BLEU, METEOR and ROUGE-L in [0, 1], CIDEr in [0, 10].
Published tables print them x100 (see :func:`lib.metrics.reference.to_published_scale`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Metric names returned by :func:`caption_metrics`, in display order.
CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029|]")
_SPACES_RE = re.compile(r"\s+")


def _package_dir() -> Path:
    try:
        import pycocoevalcap
    except ImportError as err:  # pragma: no cover - dependency of the project
        raise ImportError(
            "lib.metrics needs pycocoevalcap (pip install pycocoevalcap) and a Java runtime."
        ) from err
    return Path(next(iter(pycocoevalcap.__path__)))


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise RuntimeError(
            "Caption metrics need a Java runtime (the PTB tokenizer and METEOR are Java "
            "programs shipped with pycocoevalcap), but `java` is not on PATH. Install one "
            "(e.g. `apt-get install default-jre-headless` or `conda install openjdk`)."
        )
    return java


def sanitize_caption(text: str) -> str:
    """Make a caption safe for the line-based Java tools.

    Parameters
    ----------
    text : str
        A caption.

    Returns
    -------
    clean : str
        NFKC-normalized, with line breaks, tabs, control characters and ``|`` replaced by
        spaces, runs of whitespace collapsed and the ends stripped.
    """
    if not isinstance(text, str):
        raise TypeError(f"captions must be str, got {type(text).__name__}: {text!r}")
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL_RE.sub(" ", text)
    return _SPACES_RE.sub(" ", text).strip()


def _dedupe(items: Sequence[str]) -> list[str]:
    """Order-preserving removal of duplicates."""
    return list(dict.fromkeys(items))


def _validate(hypotheses, references) -> tuple[list[str], list[list[str]]]:
    if isinstance(hypotheses, str):
        raise TypeError("hypotheses must be a list of captions, got a single str.")
    hypotheses = list(hypotheses)
    references = list(references)
    if len(hypotheses) == 0:
        raise ValueError("hypotheses is empty: nothing to score.")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses and references must have the same length (one list of reference "
            f"captions per hypothesis); got {len(hypotheses)} hypotheses and "
            f"{len(references)} reference lists."
        )
    hyps = [sanitize_caption(h) for h in hypotheses]
    refs = []
    for i, ref in enumerate(references):
        if isinstance(ref, str):
            raise TypeError(
                f"references[{i}] is a single str; each item must be a list of reference "
                "captions (wrap it: [caption])."
            )
        clean = [r for r in _dedupe(sanitize_caption(r) for r in ref) if r]
        if not clean:
            raise ValueError(
                f"references[{i}] holds no non-empty reference caption; every hypothesis "
                "needs at least one reference."
            )
        refs.append(clean)
    return hyps, refs


def ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """Tokenize captions as pycocoevalcap's ``PTBTokenizer`` does.

    Stanford PTBTokenizer (``-preserveLines -lowerCase``, the jar shipped with
    pycocoevalcap), then pycocoevalcap's punctuation tokens are dropped.

    Parameters
    ----------
    captions : sequence of str, length n
        Sanitized captions (no line breaks; see :func:`sanitize_caption`).

    Returns
    -------
    tokenized : list of str, length n
        Lower-cased tokens joined by single spaces.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

    captions = list(captions)
    if any("\n" in c or "\r" in c for c in captions):
        raise ValueError("ptb_tokenize: captions must not contain line breaks; sanitize first.")
    jar = _package_dir() / "tokenizer" / STANFORD_CORENLP_3_4_1_JAR
    fd, name = tempfile.mkstemp(prefix="braincap_ptb_", suffix=".txt")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write("\n".join(captions).encode("utf-8"))
        cmd = [
            _java(),
            "-Dfile.encoding=UTF-8",
            "-cp",
            str(jar),
            "edu.stanford.nlp.process.PTBTokenizer",
            "-preserveLines",
            "-lowerCase",
            name,
        ]
        proc = subprocess.run(cmd, capture_output=True, check=False)
    finally:
        os.remove(name)
    if proc.returncode != 0:
        raise RuntimeError(
            f"PTB tokenizer failed (exit {proc.returncode}): "
            f"{proc.stderr.decode(errors='replace')[-2000:]}"
        )
    lines = proc.stdout.decode("utf-8", errors="replace").split("\n")
    if len(lines) < len(captions):
        raise RuntimeError(
            f"PTB tokenizer returned {len(lines)} lines for {len(captions)} captions."
        )
    punct = set(PUNCTUATIONS)
    return [
        " ".join(w for w in line.rstrip().split(" ") if w not in punct)
        for line in lines[: len(captions)]
    ]


class MeteorScorer:
    """METEOR 1.5 (pycocoevalcap's jar and settings) in a context-managed subprocess.

    Use as ``with MeteorScorer() as m: score, scores = m.compute_score(gts, res)``; the Java
    process is closed on exit, also after an error.

    Parameters
    ----------
    max_memory : str
        Java heap limit (pycocoevalcap uses ``"2G"``).
    """

    def __init__(self, max_memory: str = "2G"):
        from pycocoevalcap.meteor.meteor import METEOR_JAR

        jar_dir = _package_dir() / "meteor"
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        cmd = [
            _java(),
            "-Dfile.encoding=UTF-8",
            "-jar",
            f"-Xmx{max_memory}",
            METEOR_JAR,
            "-",
            "-",
            "-stdio",
            "-l",
            "en",
            "-norm",
        ]
        self._proc = subprocess.Popen(
            cmd, cwd=jar_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )

    def __enter__(self) -> MeteorScorer:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Terminate the Java process (idempotent)."""
        proc = getattr(self, "_proc", None)
        if proc is None:
            return
        self._proc = None
        try:
            if proc.stdin:
                proc.stdin.close()
        except OSError:
            pass
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        self._stderr.close()

    def __del__(self):
        self.close()

    def _readline(self) -> str:
        line = self._proc.stdout.readline()
        if not line:
            self._stderr.seek(0)
            err = self._stderr.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"METEOR process ended unexpectedly. Its stderr:\n{err}")
        return line.decode("utf-8", errors="replace").strip()

    def compute_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        """Same inputs and outputs as ``pycocoevalcap.meteor.meteor.Meteor.compute_score``.

        Parameters
        ----------
        gts : dict
            id -> list of tokenized reference captions.
        res : dict
            id -> [tokenized hypothesis].

        Returns
        -------
        score : float
            Corpus METEOR (from the pooled statistics, as pycocoevalcap).
        scores : list of float
            Per-caption METEOR.
        """
        if self._proc is None:
            raise RuntimeError("MeteorScorer is closed.")
        if gts.keys() != res.keys():
            raise ValueError("gts and res must have the same keys.")
        ids = list(gts.keys())
        lines = []
        for i in ids:
            if len(res[i]) != 1:
                raise ValueError(f"res[{i!r}] must hold exactly one hypothesis.")
            hyp = res[i][0].replace("|||", "").replace("  ", " ")
            lines.append(" ||| ".join(("SCORE", " ||| ".join(gts[i]), hyp)) + "\n")
        if any(line.count("\n") != 1 for line in lines):
            raise ValueError("METEOR inputs must not contain line breaks; sanitize first.")

        # Stream every SCORE line from a thread while reading their statistics here, so that
        # neither side blocks on a full pipe.
        def _write():
            try:
                for line in lines:
                    self._proc.stdin.write(line.encode("utf-8"))
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass

        writer = threading.Thread(target=_write, daemon=True)
        writer.start()
        stats = [self._readline() for _ in ids]
        writer.join()
        self._proc.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode("utf-8"))
        self._proc.stdin.flush()
        scores = [float(self._readline()) for _ in ids]
        score = float(self._readline())
        return score, scores


def _spice(gts: dict, res: dict):
    """SPICE when its Stanford CoreNLP models are installed, else a 'skipped' string."""
    lib = _package_dir() / "spice" / "lib"
    if not list(lib.glob("stanford-corenlp-3.6.0*.jar")):
        return (
            "skipped: SPICE needs Stanford CoreNLP 3.6.0 models (pycocoevalcap/spice/lib), "
            "not installed",
            None,
        )
    from pycocoevalcap.spice.spice import Spice

    score, scores = Spice().compute_score(gts, res)
    return float(score), np.array([s["All"]["f"] for s in scores], dtype=float)


def caption_metrics(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    per_item: bool = False,
    spice: bool = False,
    meteor: MeteorScorer | None = None,
) -> dict:
    """COCO caption metrics of decoded captions against their references.

    Parameters
    ----------
    hypotheses : sequence of str, length n
        One generated caption per image.
    references : sequence of sequences of str, length n
        The reference captions of each image. Duplicates are removed (order-preserving,
        after sanitization) before scoring.
    per_item : bool
        Also return per-caption scores under ``"per_item"`` (for permutation tests).
    spice : bool
        Also compute SPICE. It needs Stanford CoreNLP models that pycocoevalcap downloads
        on first use; when they are not installed the value is a ``"skipped: ..."`` string.
    meteor : MeteorScorer or None
        An open scorer to reuse across many calls (saves the ~5 s Java start-up); by
        default one is started and closed inside this call.

    Returns
    -------
    metrics : dict
        ``"BLEU-1"`` .. ``"BLEU-4"``, ``"METEOR"``, ``"ROUGE-L"``, ``"CIDEr"`` as floats on
        pycocoevalcap's scale (BLEU/METEOR/ROUGE-L in [0, 1], CIDEr in [0, 10]), ``"n"``,
        optional ``"SPICE"``, and with ``per_item=True`` a dict ``"per_item"`` of arrays of
        shape (n,) with keys ``"BLEU-1"`` .. ``"BLEU-4"``, ``"METEOR"``, ``"ROUGE-L"``,
        ``"CIDEr"`` (and ``"SPICE"``). Corpus BLEU and METEOR pool n-gram statistics over
        captions, so they are not the mean of their per-item values; ROUGE-L and CIDEr are.

    Raises
    ------
    ValueError
        Lengths differ, nothing to score, or an item has no non-empty reference.
    TypeError
        A single str where a list of captions is expected.
    """
    hyps, refs = _validate(hypotheses, references)
    gts, res = _tokenized(hyps, refs)
    out, items = _coco_scores(gts, res, meteor)
    if spice:
        s, s_items = _spice(gts, res)
        out["SPICE"] = s
        if s_items is not None:
            items["SPICE"] = s_items
    out["n"] = len(hyps)
    if per_item:
        out["per_item"] = items
    return out


def _tokenized(hyps: list[str], refs: list[list[str]]) -> tuple[dict, dict]:
    """PTB-tokenize every caption in one Java call; pycocoevalcap's ``gts`` and ``res``.

    Returns
    -------
    gts : dict of int to list of str
        Item i -> its tokenized references.
    res : dict of int to list of str
        Item i -> [its tokenized hypothesis].
    """
    tokens = ptb_tokenize(hyps + [r for ref in refs for r in ref])
    res = {i: [tokens[i]] for i in range(len(hyps))}
    gts, pos = {}, len(hyps)
    for i, ref in enumerate(refs):
        gts[i] = tokens[pos : pos + len(ref)]
        pos += len(ref)
    return gts, res


def _coco_scores(gts: dict, res: dict, meteor: MeteorScorer | None) -> tuple[dict, dict]:
    """Corpus and per-item BLEU-1..4, METEOR, ROUGE-L and CIDEr (in that order).

    Returns
    -------
    corpus : dict of str to float
    items : dict of str to ndarray of shape (n,)
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    out: dict = {}
    items: dict = {}
    bleu, bleu_items = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        out[f"BLEU-{n + 1}"] = float(bleu[n])
        items[f"BLEU-{n + 1}"] = np.asarray(bleu_items[n], dtype=float)
    if meteor is None:
        with MeteorScorer() as scorer:
            m, m_items = scorer.compute_score(gts, res)
    else:
        m, m_items = meteor.compute_score(gts, res)
    out["METEOR"], items["METEOR"] = float(m), np.asarray(m_items, dtype=float)
    r, r_items = Rouge().compute_score(gts, res)
    out["ROUGE-L"], items["ROUGE-L"] = float(r), np.asarray(r_items, dtype=float)
    c, c_items = Cider().compute_score(gts, res)
    out["CIDEr"], items["CIDEr"] = float(c), np.asarray(c_items, dtype=float)
    return out, items
