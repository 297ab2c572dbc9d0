"""Errors raised on bad NSD input. Each message names the file, what was expected and the fix."""

from __future__ import annotations


class NSDDataError(Exception):
    """Base class of every NSD input problem."""


class NSDMissingFileError(NSDDataError, FileNotFoundError):
    """A file that preparation needs is absent."""


class NSDFormatError(NSDDataError, ValueError):
    """A file exists but does not hold what NSD's layout promises (fields, shapes, grids)."""


class NSDCorruptFileError(NSDDataError, OSError):
    """A file could not be read to the end (truncated download, broken gzip stream)."""


def missing(path, what: str, fix: str) -> NSDMissingFileError:
    """Build a :class:`NSDMissingFileError` with a uniform message."""
    return NSDMissingFileError(f"{what} not found: expected {path}. {fix}")


class NSDGridMismatchError(NSDFormatError):
    """A volume (ROI or session) is not on the betas grid."""
