"""What this machine's LAPACK and BLAS do: the measured probes and the machine rules the
ridge backends (:mod:`lib.ridge.backends`) follow.

- :func:`probe_blas`: float32 matmul and Cholesky throughput of NumPy and torch, and whether
  one thread factorises faster than all (on cores shared with other work it can be 5-20x
  faster); :func:`lapack_threads` applies that.
- :func:`eigh_library`: the NumPy backend's eigensolver, torch's (MKL) on Intel CPUs, else
  SciPy's; a rule of the machine, never of a timing, so a run's numbers do not depend on the
  load. :func:`probe_torch_eigh` probes its thread count.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time

import numpy as np

#: Environment variable choosing the NumPy backend's eigensolver (see :func:`eigh_library`).
EIGH_ENV_VAR = "LIB_RIDGE_EIGH"


def _best_gflops(fns: dict, flops: float, repeats: int) -> dict:
    """GFLOP/s of each function, best of ``repeats`` rounds that alternate between them
    (so that a burst of load on a shared machine does not favour one)."""
    best = dict.fromkeys(fns, np.inf)
    for _ in range(repeats + 1):  # the first round warms up
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: flops / sec / 1e9 for name, sec in best.items()}


@contextlib.contextmanager
def _one_torch_thread():
    """torch on one thread inside the block, its thread count restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def lapack_threads(backend: str, task: str = "lapack"):
    """Run LAPACK factorisations on one thread where :func:`probe_blas` found that faster
    (``task="eigh"``: torch's eigendecomposition, probed on its own by
    :func:`probe_torch_eigh`).

    Threaded LAPACK (``potrf``, ``syevd``; OpenBLAS's and torch's alike) synchronises its
    threads at every panel; when the cores are shared with other work this can make it
    5-20x slower than one thread (measured on a loaded 2-core AMD EPYC: ``spotrf`` at
    n = 3000 8-11 s on 2 threads, 0.55 s on one; ``syevd`` at n = 1500 13-18 s vs 1.2-2 s),
    while matrix products keep their speed.

    Parameters
    ----------
    backend : {"numpy", "torch", "torch_cuda"}
        Whose LAPACK runs inside the block (CUDA: left alone).
    task : {"lapack", "eigh"}
        Which probe decides: the Cholesky one, or torch's eigendecomposition.
    """
    if backend == "torch_cuda":
        yield
        return
    threads = probe_torch_eigh() if task == "eigh" else probe_blas()[f"{backend}_lapack_threads"]
    if threads != 1:
        yield
        return
    with one_thread(backend):
        yield


@contextlib.contextmanager
def one_thread(backend: str):
    """Run the CPU library of ``backend`` on one thread inside the block (CUDA: left alone).

    Also for many small factorisations and products (matrices of a few hundred rows): two
    threads synchronising on each of them were 2x slower than one on the 2-core Xeon.
    """
    if backend == "torch_cuda":
        yield
    elif backend == "torch":
        with _one_torch_thread():
            yield
    else:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            yield


@functools.cache
def probe_blas(n: int = 1024, repeats: int = 4) -> dict:
    """Float32 matmul throughput of NumPy and of torch on the CPU, in GFLOP/s.

    Measured once per process (cached): best of ``repeats`` alternating rounds of
    ``n x n`` products (and Cholesky factorisations) after a warm-up round, about 0.2-1 s.

    Returns
    -------
    probe : dict
        ``numpy`` and ``torch`` (matmul GFLOP/s), ``faster`` (the backend with more);
        ``numpy_cholesky``, ``torch_cholesky`` (``spotrf`` GFLOP/s) and
        ``numpy_lapack_threads``, ``torch_lapack_threads`` (1 when one thread factorises
        faster than all, else None: the library's default).
    """
    import torch
    from scipy.linalg import lapack
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    out = _best_gflops({"numpy": lambda: a @ b, "torch": lambda: ta @ tb}, 2 * n**3, repeats)
    out["faster"] = "numpy" if out["numpy"] >= out["torch"] else "torch"
    g = np.asfortranarray(a @ a.T / n + np.eye(n, dtype=np.float32))
    tg = torch.from_numpy(g)

    def numpy_one():
        with threadpool_limits(1, user_api="blas"):
            lapack.spotrf(g, lower=1)

    def torch_one():
        with _one_torch_thread():
            torch.linalg.cholesky(tg)

    chol = _best_gflops({"numpy_1": numpy_one, "numpy": lambda: lapack.spotrf(g, lower=1),
                         "torch_1": torch_one, "torch": lambda: torch.linalg.cholesky(tg)},
                        n**3 / 3, repeats)
    for lib in ("numpy", "torch"):
        out[f"{lib}_lapack_threads"] = 1 if chol[f"{lib}_1"] > chol[lib] else None
        out[f"{lib}_cholesky"] = max(chol[f"{lib}_1"], chol[lib])
    return out


@functools.cache
def probe_torch_eigh(n: int = 768, repeats: int = 2) -> int | None:
    """1 when torch's ``syevd`` runs faster on one thread than on all, else None.

    Measured once per process, the first time :class:`NumpyBackend` decomposes through torch
    (:func:`eigh_library`): best of ``repeats`` alternating rounds at ``n x n``, about 0.3 s
    (at n = 384 one thread won on a quiet 2-core Xeon where two threads were 1.6x faster at
    n = 3000; from n = 768 on the two agree). Not measured when torch already runs on one
    thread (each test process, a Dask worker on a shared machine): nothing to choose.
    """
    import torch

    if torch.get_num_threads() == 1:
        return None
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    sym = torch.from_numpy(a @ a.T / n + np.eye(n, dtype=np.float32))

    def one():
        with _one_torch_thread():
            torch.linalg.eigh(sym)

    speed = _best_gflops({"one": one, "all": lambda: torch.linalg.eigh(sym)}, 1.0, repeats)
    return 1 if speed["one"] > speed["all"] else None


@functools.cache
def eigh_library() -> str:
    """Which LAPACK runs the NumPy backend's eigendecompositions: ``"torch"`` or ``"scipy"``.

    ``$LIB_RIDGE_EIGH`` (``torch`` or ``scipy``) decides when set. Otherwise torch's (MKL)
    on Intel CPUs when torch was built with MKL, else SciPy's (OpenBLAS). On a 2-core Intel
    Xeon MKL's ``ssyevd`` at n = 3000 took 1.11-1.27 s inside the fit against 1.40-1.72 s for
    SciPy's (five alternating fits each), a tenth of a leave-one-out fit; on AMD CPUs it was
    not measured, so SciPy's stays. The rule depends on the machine, never on a timing, so a
    run gives the same numbers every day (the two libraries round differently).

    Returns
    -------
    library : {"torch", "scipy"}
    """
    setting = os.environ.get(EIGH_ENV_VAR, "") or "auto"
    if setting in ("torch", "scipy"):
        return setting
    if setting != "auto":
        raise ValueError(f"{EIGH_ENV_VAR}={setting!r} is not one of ('torch', 'scipy', 'auto').")
    try:
        import torch
    except ImportError:
        return "scipy"
    from lib.resources import cpu_info

    intel = cpu_info()["vendor"] == "GenuineIntel"
    return "torch" if intel and torch.backends.mkl.is_available() else "scipy"
