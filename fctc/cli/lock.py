"""An exclusive lock on a run folder, so two ``fctc train`` never write into one.

:class:`RunLock` takes ``fcntl.flock`` on ``<run>/fctc.lock`` and writes its holder (pid, host,
start time) into the file, which it empties when it releases the lock. The kernel releases the
lock when the holder exits, however it exits, so a run killed with ``kill -9`` leaves a record
whose pid is dead and no lock: the next run takes the folder over and says so
(:attr:`RunLock.stale_holder`). A process that forked from the holder (a data-loading worker) shares the
lock until it exits too; a lock held while its recorded pid is dead is reported as that.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import RunError

__all__ = ["LOCK_FILE", "RunLock"]

LOCK_FILE = "fctc.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _holder(text: str) -> dict[str, Any]:
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """Hold the run folder ``folder`` for this process (a context manager).

    Args:
        folder: the run folder (created if missing).
        wait: seconds to wait for a lock whose recorded holder is dead to be released by the
            processes it left behind (data-loading workers exit within seconds).

    Raises:
        RunError: another live process holds the folder (the message names its pid, host
            and start time), or the folder cannot be created or written.
    """

    def __init__(self, folder: str | os.PathLike, wait: float = 10.0):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.wait = float(wait)
        self._fd: int | None = None
        self.stale_holder: dict[str, Any] | None = None
        """After :meth:`acquire`: the record of a previous holder that died holding the lock
        (killed, say), whose lock the kernel released; None otherwise."""

    def acquire(self) -> "RunLock":
        """Take the lock (see the class).

        Returns:
            ``self``.

        Raises:
            RunError: as for the class.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise RunError(f"cannot use the run folder {self.folder} (--out): "
                           f"{e.strerror}; choose a folder you can write to") from None
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                stale = holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", 0) or 0))
                if not stale or time.monotonic() > deadline:
                    os.close(fd)
                    raise RunError(self._busy(holder, stale)) from None
                time.sleep(0.2)
        self._fd = fd
        previous = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        self.stale_holder = previous if previous.get("pid") and not _alive(int(previous["pid"])) else None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        return self

    def _busy(self, holder: dict[str, Any], stale: bool) -> str:
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
               f"{holder.get('started', '?')}")
        if stale:
            return (f"run folder {self.folder} is locked ({self.path}) by {who}, which is no "
                    "longer running but left processes that still hold the lock; wait for them "
                    f"to exit (`fuser {self.path}` lists them), or use another --out")
        return (f"run folder {self.folder} is in use by another fctc train ({who}); wait for it "
                "to finish, or use another --out")

    def release(self) -> None:
        """Release the lock (idempotent). The file stays, emptied: a record left in it means
        its holder died without releasing."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
