"""Fetch exactly the NSD files that preparation needs, from NSD's public S3 bucket.

NSD lives in ``s3://natural-scenes-dataset`` and can be read anonymously over HTTPS at
``https://natural-scenes-dataset.s3.amazonaws.com/<key>`` once you have accepted NSD's terms of
use (https://naturalscenesdataset.org). Keys are the paths of :class:`lib.nsd.NSDLayout`.

Downloads are resumable: data goes to ``<file>.part`` and continues with an HTTP ``Range``
request; a file whose size already matches the server's (HEAD ``Content-Length``) is skipped.
COCO caption annotations come from COCO's ``annotations_trainval2017.zip`` (only the two
``captions_*.json`` members are extracted into ``<dest>/annotations/``).

This module is tested against a local ``http.server`` stand-in (the test machines are offline);
the base URLs are parameters.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from lib.config import show_progress
from lib.nsd.layout import ANNOTATIONS, COCO_CAPTION_FILES, NSDLayout

logger = logging.getLogger(__name__)

NSD_BASE_URL = "https://natural-scenes-dataset.s3.amazonaws.com"
COCO_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
_CHUNK = 1 << 20
#: Sessions of the download command by default: the 37 NSD publishes for subject 1.
DEFAULT_SESSIONS = "1-37"


class DownloadError(RuntimeError):
    """A file could not be fetched (names the URL, the HTTP status and what to do)."""

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


@dataclass
class RemoteFile:
    """One file to fetch: its key (= relative path), URL, destination and remote size."""

    key: str
    url: str
    dest: Path
    size: int | None = None
    status: str = ""


def parse_sessions(text: str) -> list[int]:
    """Parse ``"1-37"``, ``"1,3,5-7"`` or ``"4"`` into sorted session numbers.

    >>> parse_sessions("1-3,7")
    [1, 2, 3, 7]
    """
    sessions: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-", 1))
            if hi < lo:
                raise ValueError(f"sessions={text!r}: range {part!r} runs backwards.")
            sessions.update(range(lo, hi + 1))
        else:
            sessions.add(int(part))
    if not sessions or min(sessions) < 1:
        raise ValueError(f"sessions={text!r}: expected 1-based numbers such as '1-37' or '1,3'.")
    return sorted(sessions)


def plan(subject: int, sessions, dest, base_url: str = NSD_BASE_URL,
         stimuli: bool = True) -> list[RemoteFile]:
    """The files to fetch for one subject (no network access)."""
    dest = Path(dest)
    base = base_url.rstrip("/")
    return [
        RemoteFile(key=k, url=f"{base}/{k}", dest=dest / k)
        for k in NSDLayout.keys(subject, sessions, stimuli=stimuli)
    ]


def _session(session=None):
    import requests

    return session if session is not None else requests.Session()


def remote_size(url: str, session=None, timeout: float = 30) -> int:
    """Size in bytes from a HEAD request; raises :class:`DownloadError` on HTTP errors."""
    import requests

    http = _session(session)
    try:
        resp = http.head(url, allow_redirects=True, timeout=timeout)
    except requests.RequestException as exc:
        raise DownloadError(
            f"Could not reach {url} ({type(exc).__name__}). Check the network connection (and "
            "--base-url); NSD's bucket is public and needs no credentials.", unreachable=True,
        ) from exc
    if resp.status_code != 200:
        raise DownloadError(
            f"HEAD {url} returned HTTP {resp.status_code}. "
            + ("The file does not exist (NSD withholds some sessions; check --sessions)."
               if resp.status_code == 404 else
               "Check that you accepted NSD's terms and that the URL is reachable.")
        )
    length = resp.headers.get("Content-Length")
    if length is None:
        raise DownloadError(f"HEAD {url} gave no Content-Length; cannot check completeness.")
    return int(length)


def fetch(url: str, dest, size: int | None = None, session=None, timeout: float = 60,
          progress: bool = True) -> str:
    """Download ``url`` to ``dest`` resumably.

    Parameters
    ----------
    url : str
    dest : path-like
        Final path; partial data lives in ``dest + ".part"`` until complete.
    size : int or None
        Expected size; fetched with HEAD when None.

    Returns
    -------
    status : {"skipped", "downloaded", "resumed"}
    """
    http = _session(session)
    dest = Path(dest)
    if size is None:
        size = remote_size(url, http, timeout)
    if dest.exists() and dest.stat().st_size == size:
        return "skipped"
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    status = "resumed" if have else "downloaded"
    if have < size:
        headers = {"Range": f"bytes={have}-"} if have else {}
        with http.get(url, headers=headers, stream=True, timeout=timeout) as resp:
            if have and resp.status_code == 200:  # server ignored the range: start over
                have, status = 0, "downloaded"
            elif resp.status_code not in (200, 206):
                raise DownloadError(f"GET {url} returned HTTP {resp.status_code}.")
            mode = "ab" if have else "wb"
            with open(part, mode) as fh, tqdm(
                total=size, initial=have, unit="B", unit_scale=True, desc=dest.name,
                disable=not show_progress(progress), leave=False,
            ) as bar:
                for block in resp.iter_content(_CHUNK):
                    fh.write(block)
                    bar.update(len(block))
    got = part.stat().st_size
    if got != size:
        raise DownloadError(
            f"{url}: got {got} of {size} bytes (connection dropped?). Run the same command "
            f"again to resume from {part}."
        )
    os.replace(part, dest)
    return status


def download_subject(subject: int, sessions, dest, base_url: str = NSD_BASE_URL,
                     stimuli: bool = True, dry_run: bool = False, session=None,
                     progress: bool = True) -> list[RemoteFile]:
    """Fetch (or, with ``dry_run``, list) every file needed to prepare one subject.

    Returns
    -------
    files : list of RemoteFile
        With ``size`` and ``status`` ("skipped", "downloaded", "resumed", "planned",
        "missing: ...") filled in. Files the server lacks are reported, not fatal, so that
        one absent session does not stop the others; the CLI exits non-zero then.
    """
    http = _session(session)
    files = plan(subject, sessions, dest, base_url, stimuli)
    quiet = not show_progress(progress) or dry_run
    for f in tqdm(files, desc="NSD files", unit="file", disable=quiet):
        try:
            f.size = remote_size(f.url, http)
        except DownloadError as exc:
            if exc.unreachable:
                raise
            f.status = f"missing: {exc}"
            continue
        if dry_run:
            done = f.dest.exists() and f.dest.stat().st_size == f.size
            f.status = "complete" if done else "planned"
            continue
        f.status = fetch(f.url, f.dest, f.size, http, progress=progress)
        logger.info("%s: %s", f.key, f.status)
    return files


def download_coco_captions(dest, url: str = COCO_ANNOTATIONS_URL, session=None,
                           progress: bool = True, instances: bool = False) -> list[Path]:
    """Fetch COCO's annotation zip (resumable) and extract the two caption files.

    With ``instances``, also extract ``instances_val2017.json`` (COCO's object categories,
    read by :func:`lib.nsd.coco.coco_lexicon`; train and val share the same categories).

    Files already extracted are kept (the zip is not fetched again).

    Returns the paths of ``<dest>/annotations/captions_{train,val}2017.json`` (then of the
    instances file).
    """
    dest = Path(dest)
    wanted = COCO_CAPTION_FILES + (("instances_val2017.json",) if instances else ())
    targets = [dest / ANNOTATIONS / name for name in wanted]
    if all(t.is_file() and t.stat().st_size > 0 for t in targets):
        return targets  # already extracted: no need for the 250 MB zip again
    zpath = dest / ANNOTATIONS / Path(url).name
    fetch(url, zpath, session=_session(session), progress=progress)
    out = []
    with zipfile.ZipFile(zpath) as zf:
        names = {Path(n).name: n for n in zf.namelist()}
        for name in wanted:
            if name not in names:
                raise DownloadError(f"{zpath} has no {name}; is it annotations_trainval2017.zip?")
            target = dest / ANNOTATIONS / name
            tmp = target.with_name(target.name + ".part")
            with zf.open(names[name]) as src, open(tmp, "wb") as dst:
                while block := src.read(_CHUNK):
                    dst.write(block)
            os.replace(tmp, target)
            out.append(target)
    return out


def format_size(n: int | None) -> str:
    """Human-readable byte count."""
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
