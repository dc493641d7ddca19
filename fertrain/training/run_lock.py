"""One run directory, one writer: a process training in a run directory holds a lock on it.

Without it, `fertrain train --resume RUN` started while RUN still trains (or a tune worker retrying a
trial another worker still runs) would start a second trainer on the same files, and the two would
race until one failed. The lock is `flock` on `RUN/train.lock`: the kernel releases it when the holder
exits in any way, SIGKILL included, so a killed run never blocks its own resume. The file keeps the
holder's PID, host and start time so that the refusal can name them.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from fertrain.errors import ConfigError

LOCK_FILE = "train.lock"


class RunLock:
    """Held from `acquire` until `release` (or the process's end)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"{self.path.parent}: {self._holder()} is training in this run directory; "
                "wait for it to finish (or stop it), then resume"
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _holder(self) -> str:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
            return f"process {holder['pid']} on {holder['host']} (since {holder['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"
