"""Multi-target ridge regression with alpha selection, on NumPy or torch.

:class:`RidgeCV` fits tens of thousands of targets (voxels, or the 32 x 768 BLIP-2 query-token
values of the decoding stage) over a grid of penalties and picks one alpha per target (or one
shared alpha) by exact leave-one-out on the training data, or by k-fold cross-validation.

Modules
-------
- :mod:`lib.ridge.estimator`: :class:`RidgeCV`, a scikit-learn estimator (``score`` is R^2).
- :mod:`lib.ridge.solvers`: the result type :class:`CVResult` and :func:`loo_eigen`, leave-one-out
  for every alpha from one eigendecomposition; :mod:`lib.ridge.cholesky`: :func:`loo_cholesky`,
  one Cholesky factorisation per alpha.
- :mod:`lib.ridge.kfold`: :func:`kfold`, k-fold or any given splits, returning a
  :class:`CVResult` as well: :func:`kfold_eigen` when the folds partition the samples (k-fold,
  grouped k-fold: every fold's held-out errors from the one eigendecomposition of all
  samples), else :func:`kfold_per_fold` (one eigendecomposition per fold).
- :mod:`lib.ridge.design`: centred designs in feature blocks, Gram matrices, thin spectra.
- :mod:`lib.ridge.backends`: NumPy/SciPy and torch (CPU, CUDA) backends: CUDA where available,
  else NumPy, or a setting.
- :mod:`lib.ridge.machine`: :func:`probe_blas` measures both BLAS libraries (and LAPACK's
  threads); :func:`eigh_library` names the NumPy backend's eigensolver (MKL's on Intel CPUs).
- :mod:`lib.ridge.splits`: k-fold and group-aware splits.

Numerics: eigenvalues below ``max(s) * max(n, p) * eps`` are dropped (this removes the
constant direction that centring puts in the kernel's null space). In float32 the Gram matrix
carries a relative error of order 1e-7 x max(s) whichever precision the eigendecomposition
uses, so ``eigh_dtype`` defaults to the compute dtype; ``dtype="float64"`` matches
scikit-learn to ~1e-10. Where the time goes, per phase, is in ``bench/README.md``.
"""

from lib.ridge.backends import BACKENDS, NumpyBackend, TorchBackend, get_backend
from lib.ridge.cholesky import cholesky_is_accurate, loo_cholesky
from lib.ridge.design import Design, Targets, spectrum
from lib.ridge.estimator import DEFAULT_ALPHAS, AlphaGridWarning, RidgeCV
from lib.ridge.kfold import kfold, kfold_eigen, kfold_per_fold, partitions
from lib.ridge.machine import eigh_library, probe_blas
from lib.ridge.solvers import CVResult, Options, loo_eigen
from lib.ridge.splits import cv_splits

__all__ = [
    "BACKENDS", "DEFAULT_ALPHAS", "AlphaGridWarning", "CVResult", "Design", "NumpyBackend",
    "Options", "RidgeCV", "Targets", "TorchBackend", "cholesky_is_accurate", "cv_splits",
    "eigh_library", "get_backend", "kfold", "kfold_eigen", "kfold_per_fold", "loo_cholesky",
    "loo_eigen", "partitions", "probe_blas", "spectrum",
]
