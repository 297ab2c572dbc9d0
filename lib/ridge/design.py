"""Centred designs in feature blocks, their Gram matrices and thin spectra.

A :class:`Design` is one or several feature blocks ``X_b`` (n x p_b) sharing their rows,
with their training means. It is never concatenated or centred as a whole: Gram matrices
and products are accumulated block by block and column chunk by column chunk, each chunk
centred on the fly (the decoding stage passes several memory windows of ~15k voxels).
:class:`Targets` holds the (host) targets and hands out centred column batches on the
backend. :func:`spectrum` is the thin SVD ``Xc = U diag(sqrt s) V^T`` from one symmetric
eigendecomposition (dual ``n x n`` or primal ``p x p``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

#: Column chunk (features) used when accumulating Gram matrices from centred blocks.
FEATURE_CHUNK = 2048


def finfo(dtype) -> np.finfo:
    """``np.finfo`` of a NumPy or torch floating dtype."""
    return np.finfo(str(dtype).replace("torch.", ""))


def _chunks(p: int, size: int = FEATURE_CHUNK):
    for j in range(0, p, size):
        yield slice(j, min(j + size, p))


@dataclass
class Design:
    """Feature blocks with their centring means, on one backend.

    Attributes
    ----------
    blocks : list of backend arrays of shape (n, p_b)
    means : list of backend arrays of shape (p_b,)
        Zeros when there is no intercept.
    bk : backend (:mod:`lib.ridge.backends`)
    """

    blocks: list
    means: list
    bk: object
    fit_intercept: bool = True

    @classmethod
    def from_blocks(cls, blocks, bk, fit_intercept: bool = True) -> Design:
        """Design with the blocks' own means (or zeros without intercept)."""
        if fit_intercept:
            means = [bk.mean64(b, 0) for b in blocks]
        else:
            means = [bk.zeros(b.shape[1], b.dtype) for b in blocks]
        return cls(list(blocks), means, bk, fit_intercept)

    @property
    def n(self) -> int:
        return self.blocks[0].shape[0]

    @property
    def p(self) -> int:
        return sum(b.shape[1] for b in self.blocks)

    @property
    def dtype(self):
        return self.blocks[0].dtype

    def rows(self, idx, means=None) -> Design:
        """The design restricted to rows ``idx``, centred on their own means or ``means``."""
        ix = self.bk.index(idx)
        blocks = [b[ix] for b in self.blocks]
        if means is None:
            return Design.from_blocks(blocks, self.bk, self.fit_intercept)
        return Design(blocks, means, self.bk, self.fit_intercept)

    def gram(self):
        """``Xc Xc^T`` (n x n), accumulated over column chunks, lower block triangle mirrored."""
        n, bk = self.n, self.bk
        K = bk.zeros((n, n), self.dtype)
        if bk.name == "numpy":  # NumPy runs xc @ xc.T as one syrk (half the flops)
            for b, m in zip(self.blocks, self.means):
                for sl in _chunks(b.shape[1]):
                    xc = b[:, sl] - m[sl]
                    K += xc @ xc.T
            return K
        q = 4 if n >= 512 else 1
        edges = [round(i * n / q) for i in range(q + 1)]
        spans = [slice(edges[i], edges[i + 1]) for i in range(q)]
        for b, m in zip(self.blocks, self.means):
            for sl in _chunks(b.shape[1]):
                xc = b[:, sl] - m[sl]
                for i, ri in enumerate(spans):
                    for rj in spans[: i + 1]:
                        K[ri, rj].addmm_(xc[ri], xc[rj].T)
        for i, ri in enumerate(spans):
            for rj in spans[:i]:
                K[rj, ri] = K[ri, rj].T
        return K

    def primal_gram(self):
        """``Xc^T Xc`` (p x p) assembled block by block."""
        sizes = [b.shape[1] for b in self.blocks]
        offs = np.concatenate([[0], np.cumsum(sizes)])
        G = self.bk.empty((self.p, self.p), self.dtype)
        centred = [b - m for b, m in zip(self.blocks, self.means)]
        for a in range(len(centred)):
            for c in range(a, len(centred)):
                g = centred[a].T @ centred[c]
                G[offs[a] : offs[a + 1], offs[c] : offs[c + 1]] = g
                if c != a:
                    G[offs[c] : offs[c + 1], offs[a] : offs[a + 1]] = g.T
        return G

    def cross(self, A):
        """``Xc^T A`` (p, k) for ``A`` of shape (n, k)."""
        out = [(b[:, sl] - m[sl]).T @ A for b, m in zip(self.blocks, self.means)
               for sl in _chunks(b.shape[1])]
        if len(out) == 1:
            return out[0]
        bk = self.bk
        P = bk.empty((self.p, A.shape[1]), A.dtype)
        j = 0
        for part in out:
            P[j : j + part.shape[0]] = part
            j += part.shape[0]
        return P

    def times(self, B, means=None):
        """``(X - 1 m^T) B`` (n, k) for ``B`` of shape (p, k); ``means`` default to the design's."""
        means = self.means if means is None else means
        out, j = None, 0
        for b, m in zip(self.blocks, means):
            Bb = B[j : j + b.shape[1]]
            part = b @ Bb - (m @ Bb)[None, :]
            out = part if out is None else out + part
            j += b.shape[1]
        return out


@dataclass
class Targets:
    """Targets on the host, centred batch by batch on the backend.

    Attributes
    ----------
    Y : ndarray of shape (n, t)
    mean : backend array of shape (t,)
        Training means (zeros without intercept).
    bk : backend
    dtype : backend dtype of the work arrays
    """

    Y: np.ndarray
    mean: object
    bk: object
    dtype: object

    @classmethod
    def from_array(cls, Y, bk, dtype, fit_intercept: bool = True) -> Targets:
        t = Y.shape[1]
        if fit_intercept:
            mean = bk.asarray(Y.mean(0, dtype=np.float64), dtype)
        else:
            mean = bk.zeros(t, dtype)
        return cls(Y, mean, bk, dtype)

    @property
    def t(self) -> int:
        return self.Y.shape[1]

    def batch(self, sl: slice, rows=None):
        """Centred targets ``Y[rows, sl] - mean[sl]`` as a backend array."""
        y = self.Y[:, sl] if rows is None else self.Y[rows, sl]
        return self.bk.asarray(y, self.dtype) - self.mean[sl]


def batches(n: int, p: int, t: int, r: int, size: int | None = None,
            budget: int = 512 * 2**20) -> list[slice]:
    """Target slices of ``size`` (None: about ``budget`` bytes of float32 work arrays)."""
    if size is None:
        per_target = 4 * (5 * n + 2 * r + p)  # Y, C, dual, best dual, residual, coef
        size = int(max(64, min(t, budget // max(per_target, 1))))
    size = max(1, int(size))
    return [slice(j, min(j + size, t)) for j in range(0, t, size)]


def eigh_clipped(M, bk, eigh_dtype=None):
    """Symmetric eigendecomposition keeping eigenvalues above ``max(s) * n * eps``.

    Parameters
    ----------
    M : backend array of shape (m, m), symmetric positive semi-definite (overwritten)
    bk : backend
    eigh_dtype : backend dtype or None
        Precision of the factorisation (None: ``M``'s).

    Returns
    -------
    s : array of shape (r,)
    Q : array of shape (m, r)
    """
    dt = M.dtype
    work = M if eigh_dtype is None or eigh_dtype == dt else bk.cast(M, eigh_dtype)
    s, Q = bk.eigh(work, overwrite=True)
    s, Q = bk.cast(s, dt), bk.cast(Q, dt)
    s_np = bk.to_numpy(s)
    smax = float(np.abs(s_np).max()) if s_np.size else 0.0
    tol = max(smax * max(M.shape[0], 1) * finfo(work.dtype).eps, finfo(dt).tiny)
    first = int(np.searchsorted(s_np, tol, side="right"))  # LAPACK sorts them ascending
    return s[first:], Q[:, first:]  # views: no copy of the (m, m) eigenvectors


def largest_eigenvalue(K, bk, n_iter: int = 12) -> float:
    """Largest eigenvalue of symmetric PSD ``K`` (block power iteration, x 1.1 margin).

    The block is re-orthonormalised by Cholesky-QR of its small Gram matrix (on the host,
    in float64): LAPACK's threaded QR of a tall thin matrix is slow on shared cores.
    """
    V = bk.randn(K.shape[0], 8, K.dtype)
    for _ in range(n_iter):
        V = K @ V
        small = bk.to_numpy(V.T @ V).astype(np.float64)
        R = np.linalg.cholesky(small + 1e-12 * np.trace(small) * np.eye(len(small)))
        V = V @ bk.asarray(np.linalg.inv(R).T, V.dtype)
    small = bk.to_numpy(V.T @ (K @ V)).astype(np.float64)
    return 1.1 * float(np.linalg.eigvalsh((small + small.T) / 2).max())


@dataclass
class Spectrum:
    """Thin spectrum of a centred design: ``Xc = U diag(sqrt s) V^T``.

    Attributes
    ----------
    U : array of shape (n, r)
    s : array of shape (r,)
    W : array of shape (p, r) or None
        ``Xc^T U = V diag(sqrt s)`` when forming it once is cheaper than going through
        dual coefficients for every target.
    design : Design
    """

    U: object
    s: object
    W: object
    design: Design

    @property
    def spans(self) -> bool:
        """Whether ``U`` spans the centred sample space (rank ``n - 1`` with an intercept,
        ``n`` without): then every residual lies in it, with no part outside ``U``."""
        return int(self.s.shape[0]) + int(self.design.fit_intercept) == self.design.n

    def coef(self, C, alpha):
        """Coefficients (p, k) for ``C = U^T Yc`` (r, k) and per-target ``alpha`` (k,)."""
        D = C / (self.s[:, None] + alpha[None, :])
        if self.W is not None:
            return self.W @ D
        return self.design.cross(self.U @ D)


def spectrum(design: Design, n_targets: int | None = None, K=None, eigh_dtype=None,
             clock=None, dual: bool | None = None) -> Spectrum:
    """Thin spectrum from the dual (``n <= p``) or primal eigendecomposition.

    Parameters
    ----------
    design : Design
    n_targets : int or None
        Targets the coefficients will be computed for (decides whether ``W`` is formed).
    K : backend array of shape (n, n) or None
        The dual Gram matrix if already computed (overwritten).
    eigh_dtype : backend dtype or None
    clock : Clock or None
    dual : bool or None
        Force the dual (True) or primal (False) form; None: dual when ``n <= p``.

    Returns
    -------
    spectrum : Spectrum
    """
    clock = clock or Clock(design.bk)
    n, p = design.n, design.p
    if (n <= p) if dual is None else dual:
        K = design.gram() if K is None else K
        clock("gram")
        s, U = eigh_clipped(K, design.bk, eigh_dtype)
        del K
        clock("eigh")
        r, t = U.shape[1], n_targets or 0
        if n_targets is None or 2 * n * p * r + 2 * p * r * t >= 2 * n * r * t + 2 * n * p * t:
            return Spectrum(U, s, None, design)
        W = design.cross(U)
        clock("project")
        return Spectrum(U, s, W, design)
    G = design.primal_gram()
    clock("gram")
    s, V = eigh_clipped(G, design.bk, eigh_dtype)
    del G
    clock("eigh")
    root = s**0.5
    W = V * root[None, :]
    U = design.times(V) / root[None, :]
    clock("project")
    return Spectrum(U, s, W, design)


class Clock:
    """Accumulate wall time of named phases (synchronising the device before reading).

    Parameters
    ----------
    bk : backend
    times : dict or None
        Where phase times (seconds) accumulate.
    verbose : bool
        Also print each phase's time to stderr.
    """

    def __init__(self, bk, times: dict | None = None, verbose: bool = False):
        self.bk, self.verbose = bk, verbose
        self.times = {} if times is None else times
        self.t = time.perf_counter()

    def __call__(self, name: str):
        self.bk.sync()
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self.t
        if self.verbose:
            print(f"[lib.ridge] {name}: {now - self.t:.1f} s", file=sys.stderr, flush=True)
        self.t = now
