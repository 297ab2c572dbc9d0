"""Java runners of pycocoevalcap's PTB tokenizer and METEOR 1.5, robust in long analyses.

They replace pycocoevalcap's own wrappers (the scores are identical, which the tests check):

- :func:`ptb_tokenize` writes its temporary file to the system temporary folder (pycocoevalcap
  writes into its own package folder, which may be read-only), and reads and writes UTF-8;
- :class:`MeteorScorer` runs METEOR in a context-managed Java subprocess that is always closed,
  speaks the same ``SCORE``/``EVAL`` protocol as pycocoevalcap's wrapper, and streams all
  segments in one go (a writer thread avoids pipe dead-locks), which keeps ~1,000 captions to a
  few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path


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


#: Tokenized captions of this process (caption -> tokens): each Java start costs ~0.3 s, and
#: chapter 05 tokenizes the same references for every run and condition.
_TOKENS: dict[str, str] = {}


def ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """Tokenize captions as pycocoevalcap's ``PTBTokenizer`` does.

    Stanford PTBTokenizer (``-preserveLines -lowerCase``, the jar shipped with
    pycocoevalcap), then pycocoevalcap's punctuation tokens are dropped. Each line is
    tokenized on its own, so captions seen before in this process are taken from a cache and
    only new ones go to Java (one call for all of them).

    Parameters
    ----------
    captions : sequence of str, length n
        Sanitized captions (no line breaks; see :func:`lib.metrics.sanitize_caption`).

    Returns
    -------
    tokenized : list of str, length n
        Lower-cased tokens joined by single spaces.
    """
    captions = list(captions)
    if any("\n" in c or "\r" in c for c in captions):
        raise ValueError("ptb_tokenize: captions must not contain line breaks; sanitize first.")
    new = list(dict.fromkeys(c for c in captions if c not in _TOKENS))
    if new:
        _TOKENS.update(zip(new, _run_ptb_tokenizer(new)))
    return [_TOKENS[c] for c in captions]


def _run_ptb_tokenizer(captions: list[str]) -> list[str]:
    """One Java run of the PTB tokenizer over ``captions`` (one per line)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

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
    process is closed on exit, also after an error. The process starts when the scorer is made,
    so it can load METEOR's tables (about 8 s) while other work runs; entering a closed scorer
    starts a new process (a notebook cell ``with meteor:`` that is run again still works).

    Parameters
    ----------
    max_memory : str
        Java heap limit (pycocoevalcap uses ``"2G"``).
    """

    def __init__(self, max_memory: str = "2G"):
        self._max_memory = max_memory
        self._start()

    def _start(self) -> None:
        from pycocoevalcap.meteor.meteor import METEOR_JAR

        jar_dir = _package_dir() / "meteor"
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        cmd = [
            _java(),
            "-Dfile.encoding=UTF-8",
            "-jar",
            f"-Xmx{self._max_memory}",
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
        if self._proc is None:  # closed: a new process
            self._start()
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
