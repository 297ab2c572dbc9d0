"""Run one function in two processes at once, as two chapters on two Dask workers would."""

from __future__ import annotations

import multiprocessing


def run_side_by_side(target, args: tuple, n: int = 2, timeout: float = 60) -> list[int]:
    """Start ``n`` forked processes of ``target(*args)`` together; return their exit codes.

    Forked, so that a test's monkeypatches hold in the children.
    """
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=target, args=args) for _ in range(n)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout)
    return [proc.exitcode for proc in procs]
