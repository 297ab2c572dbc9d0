"""Atomic file output (an interrupted stage never leaves a half-written result), a lock that
makes concurrent processes take turns on a file, and short fingerprints of files for the names
of caches derived from them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    Parameters
    ----------
    path : path-like
        Final destination. Its parent directory is created if needed.

    Yields
    ------
    tmp : Path
        Where to write. On an exception it is removed and ``path`` is left untouched.

    Examples
    --------
    >>> with atomic_path("out/scores.csv") as tmp:  # doctest: +SKIP
    ...     frame.to_csv(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, waiting: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` between processes (POSIX ``flock``).

    Two chapters running side by side (on Dask workers) that fill the same cache take turns:
    the second waits, then finds the work done. No-op where ``fcntl`` is missing (Windows).

    Parameters
    ----------
    path : path-like
        Lock file, created if missing (with its folder) and left in place.
    waiting : str or None
        Printed when another process holds the lock, before waiting for it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(waiting, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_json(path: str | os.PathLike, obj: Any, **kwargs: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, **kwargs) + "\n")
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def stat_fingerprint(files) -> str:
    """``"_"`` + 8 hex digits hashing the names, sizes and modification times of ``files``.

    Cheap (no file is read), so it suits inputs of many gigabytes; a file rewritten with the
    same name, size and time would not be noticed. Missing files are skipped; ``""`` if none
    exists.

    Parameters
    ----------
    files : iterable of path-like
    """
    h = hashlib.sha1()
    found = False
    for file in files:
        file = Path(file)
        if file.is_file():
            st = file.stat()
            h.update(f"{file.name}:{st.st_size}:{st.st_mtime_ns};".encode())
            found = True
    return "_" + h.hexdigest()[:8] if found else ""
