"""Typed errors raised by library code; the CLI turns each into a one-line message and an exit code."""

from __future__ import annotations

import errno
from pathlib import Path


class FertrainError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""

    exit_code = 2


class ConfigError(FertrainError):
    """A configuration file or override is invalid."""


class DataError(FertrainError):
    """Input data is missing, malformed or inconsistent."""


class ModelError(FertrainError):
    """A model file or run directory cannot be used."""


class MissingDependencyError(FertrainError):
    """An optional dependency needed for this feature is not installed."""


class TrainingDivergedError(FertrainError):
    """Training produced a NaN/inf loss."""

    exit_code = 4


class BelowThresholdError(FertrainError):
    """A quality gate failed, e.g. `evaluate --min-accuracy`: the result is valid but not good enough."""

    exit_code = 3


# Per errno: the cause in the user's words, and what to do about it.
_OS_CAUSES = {
    errno.ENOSPC: ("no space left on the device", "free space"),
    errno.EDQUOT: ("disk quota exceeded", "free space"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another path"),
    # Path.mkdir(exist_ok=True) raises this only when the path exists as something else than a folder.
    errno.EEXIST: ("exists and is not a folder", "choose another path"),
    errno.EISDIR: ("is a folder", "choose another path"),
    errno.EACCES: ("permission denied", "fix the permissions or choose another path"),
    errno.EPERM: ("operation not permitted", "fix the permissions or choose another path"),
    errno.EROFS: ("read-only file system", "choose another path"),
}


class FileSystemError(FertrainError):
    """The operating system refused to write (or read) a file: no space, a path under a file, no
    permission, a read-only file system. What was written before is intact."""

    exit_code = 5

    @classmethod
    def from_os_error(
        cls, exc: OSError, where: str | Path | None = None, then: str | None = None
    ) -> FileSystemError:
        """The one-line form of `exc`: the path, the cause and what to do.

        `where` names the path when `exc` names none; `then` is the command that continues the
        interrupted work once the cause is fixed.
        """
        cause, remedy = _OS_CAUSES.get(exc.errno, (exc.strerror or str(exc), None))
        path = exc.filename if exc.filename is not None else where
        if exc.filename2 is not None:
            path = f"{path} -> {exc.filename2}"
        message = cause if path is None else f"{path}: {cause}"
        if then is not None:
            remedy = f"{remedy or 'fix that'}, then continue with: {then}"
        return cls(message if remedy is None else f"{message}; {remedy}")
