"""Array backends of the ridge solvers: NumPy/SciPy and torch (CPU or CUDA).

In the style of himalaya's backends: the solvers write ``@``, ``*``, ``+``, slicing and
``.T`` (which NumPy arrays and torch tensors share) and call the backend for the rest,
the few operations whose spelling differs (casting, copying, factorisations, moving data
to and from the host). One backend serves a whole fit.

Which backend is fastest depends on the machine: torch's CPU wheels bring their own BLAS
(MKL on x86), NumPy and SciPy bring OpenBLAS; on AMD CPUs OpenBLAS's float32 matrix
product can be ~1.5x faster than torch's, on Intel CPUs the reverse. :func:`get_backend`
with ``"auto"`` uses CUDA when it is asked for or available, else NumPy, always: a choice
by timing (:func:`lib.ridge.machine.probe_blas` measures both) flips with the machine's load
when the two are close, and the two BLAS libraries round differently, enough to change some
voxels' chosen alpha, so the same run would give different numbers from one day to the next.
NumPy is also the BLAS scikit-learn uses, so benchmarks against it compare algorithms, not
libraries. The environment variable ``LIB_RIDGE_BACKEND`` (``numpy``, ``torch`` or
``torch_cuda``) overrides ``"auto"``; ``python -m bench ridge`` prints both throughputs. The
NumPy backend's eigendecompositions go through torch's LAPACK (MKL) on Intel CPUs
(:func:`lib.ridge.machine.eigh_library`).
"""

from __future__ import annotations

import os

import numpy as np

from lib.ridge.machine import eigh_library, lapack_threads

#: Names accepted by :func:`get_backend`.
BACKENDS = ("auto", "numpy", "torch", "torch_cuda")
ENV_VAR = "LIB_RIDGE_BACKEND"


class NumpyBackend:
    """NumPy arrays; LAPACK through :mod:`scipy.linalg` (no float64 detours)."""

    name = "numpy"
    float32, float64 = np.dtype(np.float32), np.dtype(np.float64)

    def dtype(self, name: str):
        return {"float32": self.float32, "float64": self.float64}[name]

    def asarray(self, a, dtype=None):
        """Array-like or CPU tensor -> ndarray of ``dtype`` (no copy when already so)."""
        if hasattr(a, "detach"):
            a = a.detach().cpu().numpy()
        return np.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def copy(self, a):
        return a.copy()

    def cast(self, a, dtype):
        return a.astype(dtype, copy=False)

    def mean64(self, a, axis: int = 0):
        """Mean along ``axis`` accumulated in float64, returned in ``a``'s dtype."""
        return a.mean(axis, dtype=np.float64).astype(a.dtype)

    def maximum(self, a, value: float):
        return np.maximum(a, value)

    def argmax(self, a, axis: int = 0):
        return np.argmax(a, axis)

    def index(self, idx):
        return np.asarray(idx)

    def eye_block(self, m: int, k: int, dtype):
        """The first ``k`` columns of the ``m x m`` identity (Fortran order, for BLAS)."""
        E = np.zeros((m, k), dtype=dtype, order="F")
        E[np.arange(k), np.arange(k)] = 1
        return E

    def add_diag(self, G, value: float):
        """``G + value I`` in place (``G`` square)."""
        G.flat[:: G.shape[0] + 1] += value
        return G

    def sync(self):
        pass

    def eigh(self, M, overwrite: bool = False):
        """Eigenvalues (ascending) and eigenvectors of symmetric ``M`` (LAPACK ``syevd`` of
        the library :func:`eigh_library` names)."""
        if eigh_library() == "torch":
            import torch

            with lapack_threads("torch", "eigh"):
                s, Q = torch.linalg.eigh(torch.from_numpy(M))
            return s.numpy(), Q.numpy()
        from scipy.linalg import eigh

        with lapack_threads("numpy"):
            return eigh(M, driver="evd", overwrite_a=overwrite, check_finite=False)

    def cholesky(self, G, overwrite: bool = False):
        """Lower Cholesky factor of ``G``, or None when ``G`` is not positive definite.

        LAPACK ``potrf`` on as many threads as :func:`lib.ridge.machine.probe_blas` found
        fastest (see :func:`lib.ridge.machine.lapack_threads`).
        """
        from scipy.linalg import lapack

        potrf = lapack.get_lapack_funcs("potrf", (G,))
        with lapack_threads("numpy"):
            L, info = potrf(G, lower=1, overwrite_a=overwrite, clean=1)
        return L if info == 0 else None

    def cho_solve(self, L, B):
        """``G^-1 B`` for ``G = L L^T`` (two triangular solves, ``potrs``)."""
        from scipy.linalg import lapack

        potrs = lapack.get_lapack_funcs("potrs", (L, B))
        X, info = potrs(L, B, lower=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"potrs failed with info={info}")
        return X

    def solve_lower(self, L, B):
        """``L^-1 B`` for lower-triangular ``L`` (BLAS ``trsm``; ``B`` is overwritten)."""
        from scipy.linalg import blas

        trsm = blas.get_blas_funcs("trsm", (L, B))
        return trsm(1.0, L, B, lower=1, overwrite_b=1)

    def coldot(self, a, b):
        """Column-wise dot products ``sum_i a_ij b_ij`` (no temporary array)."""
        return np.einsum("ij,ij->j", a, b)

    def matmul(self, a, b, out=None):
        """``a @ b``, written into ``out`` when given (no new array per call in loops)."""
        return np.matmul(a, b, out=out)

    def multiply(self, a, b, out=None):
        """``a * b`` (broadcasting), written into ``out`` when given."""
        return np.multiply(a, b, out=out)

    def subtract_from(self, y, e):
        """``y - e`` written into ``e`` (returns ``e``)."""
        return np.subtract(y, e, out=e)

    def copy_columns(self, dst, src, mask):
        """``dst[:, mask] = src[:, mask]`` in place, for a boolean ``mask`` (k,).

        ``putmask`` with the broadcast mask: 2-4x faster than ``copyto(where=)`` and than
        fancy-indexed columns of a row-major array.
        """
        np.putmask(dst, np.broadcast_to(mask[None, :], dst.shape), src)

    def randn(self, n: int, k: int, dtype, seed: int = 0):
        return np.random.default_rng(seed).standard_normal((n, k)).astype(dtype)


class TorchBackend:
    """torch tensors on one device (``cpu`` or ``cuda[:N]``)."""

    def __init__(self, device: str = "cpu"):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.name = "torch_cuda" if self.device.type == "cuda" else "torch"
        self.float32, self.float64 = torch.float32, torch.float64

    def dtype(self, name: str):
        return {"float32": self.float32, "float64": self.float64}[name]

    def asarray(self, a, dtype=None):
        torch = self.torch
        if not isinstance(a, torch.Tensor):
            a = np.asarray(a)
            if not a.flags.writeable:  # torch warns on read-only buffers; copy once
                a = a.copy()
            a = torch.from_numpy(a)
        return a.detach().to(device=self.device, dtype=dtype or a.dtype)

    def to_numpy(self, a) -> np.ndarray:
        return a.detach().cpu().numpy()

    def zeros(self, shape, dtype):
        return self.torch.zeros(shape, dtype=dtype, device=self.device)

    def empty(self, shape, dtype):
        return self.torch.empty(shape, dtype=dtype, device=self.device)

    def copy(self, a):
        return a.clone()

    def cast(self, a, dtype):
        return a.to(dtype)

    def mean64(self, a, axis: int = 0):
        return a.mean(axis, dtype=self.torch.float64).to(a.dtype)

    def maximum(self, a, value: float):
        return a.clamp_min(value)

    def argmax(self, a, axis: int = 0):
        return self.torch.argmax(a, axis)

    def index(self, idx):
        return self.torch.as_tensor(np.asarray(idx), device=self.device)

    def eye_block(self, m: int, k: int, dtype):
        return self.torch.eye(m, k, dtype=dtype, device=self.device)

    def add_diag(self, G, value: float):
        G.diagonal().add_(value)
        return G

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def eigh(self, M, overwrite: bool = False):
        with lapack_threads(self.name, "eigh"):
            return self.torch.linalg.eigh(M)

    def cholesky(self, G, overwrite: bool = False):
        with lapack_threads(self.name):
            L, info = self.torch.linalg.cholesky_ex(G)
        return L if int(info) == 0 else None

    def cho_solve(self, L, B):
        return self.torch.cholesky_solve(B, L)

    def solve_lower(self, L, B):
        return self.torch.linalg.solve_triangular(L, B, upper=False)

    def coldot(self, a, b):
        return self.torch.einsum("ij,ij->j", a, b)

    def matmul(self, a, b, out=None):
        return self.torch.matmul(a, b, out=out)

    def multiply(self, a, b, out=None):
        return self.torch.mul(a, b, out=out)

    def subtract_from(self, y, e):
        return self.torch.sub(y, e, out=e)

    def copy_columns(self, dst, src, mask):
        idx = self.index(np.flatnonzero(mask))
        dst.index_copy_(1, idx, src.index_select(1, idx))

    def randn(self, n: int, k: int, dtype, seed: int = 0):
        return self.asarray(np.random.default_rng(seed).standard_normal((n, k)), dtype)


def resolve_backend_name(backend: str = "auto", device: str = "auto") -> str:
    """Backend name for a ``backend`` setting and a ``device`` (see :func:`get_backend`)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}.")
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto") or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={backend!r} is not one of {BACKENDS}.")
    from lib.config import resolve_device

    dev = resolve_device(device)
    if backend == "auto":
        return "torch_cuda" if dev.type == "cuda" else "numpy"  # not by timing: see above
    if backend != "torch_cuda" and dev.type == "cuda" and device != "auto":
        raise ValueError(f"backend={backend!r} runs on the CPU but device={device!r}; use "
                         "backend='torch_cuda' (or 'auto') for CUDA.")
    return backend


def get_backend(backend: str = "auto", device: str = "auto"):
    """The backend object for a setting.

    Parameters
    ----------
    backend : {"auto", "numpy", "torch", "torch_cuda"}
        ``"auto"``: ``$LIB_RIDGE_BACKEND`` if set, else ``torch_cuda`` when ``device``
        resolves to CUDA, else NumPy (never chosen by timing, which would make results
        depend on the machine's load; see the module's docstring).
    device : {"auto", "cpu", "cuda", "cuda:N"}
        Device of the torch backends (``"auto"``: CUDA when available).

    Returns
    -------
    backend : NumpyBackend or TorchBackend
    """
    name = resolve_backend_name(backend, device)
    if name == "numpy":
        return NumpyBackend()
    if name == "torch":
        return TorchBackend("cpu")
    from lib.config import resolve_device

    dev = resolve_device("cuda" if device in ("auto", "cpu") else device)
    return TorchBackend(str(dev))
