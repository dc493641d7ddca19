"""Writing result files so that a crash or a full disk never leaves a half-written file behind."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# h5py reports a failed HDF5 write (a full disk among them) as a RuntimeError whose text holds the errno.
_HDF5_ERRNO = re.compile(r"\berrno = (\d+)")


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def writing(target: Path) -> Iterator[None]:
    """Makes any operating-system failure of the block an OSError about `target`.

    Writers that name no file (a full disk during `write`), or only their temporary file, are
    reported as failing on `target`; a folder above `target` (one that is a file, or read-only) is
    named as it is, since that folder is the cause.
    """
    try:
        yield
    except OSError as exc:
        if not (isinstance(exc.filename, str) and Path(exc.filename) in target.parents):
            exc.filename, exc.filename2 = str(target), None
        raise
    except RuntimeError as exc:
        code = _HDF5_ERRNO.search(str(exc))
        if code is None:
            raise
        number = int(code[1])
        raise OSError(number, os.strerror(number), str(target)) from exc


@contextmanager
def removed_on_failure(partial: Path) -> Iterator[None]:
    """Deletes `partial` if the block that writes it fails, so no half-written file stays beside good ones."""
    try:
        yield
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Writes `data` to a temporary file beside `path`, then renames it over `path`.

    The file gets the permissions a plain `open(path, "w")` would give it, not mkstemp's 0600.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with removed_on_failure(Path(tmp)):
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
            os.chmod(tmp, _default_file_mode())
            os.replace(tmp, path)
    return path
