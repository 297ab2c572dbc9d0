"""Wall and CPU time of the toy build's phases (one helper for the world, the models and bench).

``with phases.phase("vision/vit-s"): ...`` records ``{"wall_s", "cpu_s"}`` under the name and
prints one line (``[toyworld] vision/vit-s: 41.2 s wall, 80.3 s CPU``). CPU time is the
process's (all threads), so ``cpu_s / wall_s`` near the thread count means the phase kept the
cores busy, and a ``cpu_s`` that stays put while ``wall_s`` grows means the machine was busy
with something else. ``bench/bench_book.py`` reads these records from ``BUILD.json``.
"""

from __future__ import annotations

import contextlib
import time


class Stopwatch:
    """Wall and process CPU seconds of a block: ``with Stopwatch() as sw: ...; sw.wall_s``."""

    def __enter__(self):
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        self.wall_s = self.cpu_s = 0.0
        return self

    def __exit__(self, *exc):
        self.wall_s = time.perf_counter() - self._wall0
        self.cpu_s = time.process_time() - self._cpu0
        return False

    @property
    def seconds(self) -> float:
        """Wall seconds (what the progress of the build is made of)."""
        return self.wall_s

    def as_dict(self) -> dict:
        """``{"wall_s": ..., "cpu_s": ...}`` rounded to milliseconds."""
        return {"wall_s": round(self.wall_s, 3), "cpu_s": round(self.cpu_s, 3)}


class PhaseTimes:
    """Named phases in the order they ran, each ``{"wall_s", "cpu_s"}``.

    Parameters
    ----------
    prefix : str or None
        Printed before each phase's line; None prints nothing.
    """

    def __init__(self, prefix: str | None = "[toyworld]"):
        self.prefix = prefix
        self.phases: dict[str, dict] = {}
        self._mark = (time.perf_counter(), time.process_time())

    @contextlib.contextmanager
    def phase(self, name: str):
        """Time the block and record it under ``name`` (a repeated name adds up)."""
        with Stopwatch() as sw:
            yield sw
        self.add(name, sw.as_dict())

    def lap(self, name: str) -> None:
        """Record the time since the previous ``lap`` (or since construction) as ``name``."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.add(name, {"wall_s": wall - self._mark[0], "cpu_s": cpu - self._mark[1]})
        self._mark = (wall, cpu)

    def add(self, name: str, times: dict) -> None:
        """Record (or add to) a phase's ``{"wall_s", "cpu_s"}``."""
        old = self.phases.get(name, {"wall_s": 0.0, "cpu_s": 0.0})
        new = {k: round(old[k] + float(times[k]), 3) for k in ("wall_s", "cpu_s")}
        self.phases[name] = new
        if self.prefix is not None:
            print(f"{self.prefix} {name}: {times['wall_s']:.1f} s wall, "
                  f"{times['cpu_s']:.1f} s CPU", flush=True)

    def as_dict(self) -> dict:
        """``{name: {"wall_s", "cpu_s"}}`` (a copy)."""
        return {k: dict(v) for k, v in self.phases.items()}
