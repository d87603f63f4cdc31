"""The daemon's data directory: is it usable, and who owns it.

Room in the design: everything a daemon keeps locally lives under `[daemon] data_dir` (the SQLite checkpoint
store, the dead-letter file, the embedded FalkorDB engines), and exactly one process may own it. `run` holds
`DataDirLock` (an exclusive `fcntl.flock` on `<data_dir>/daemon.lock`, released by the kernel when the process
dies, so a SIGKILLed daemon never leaves a stale lock) for its whole lifetime; a second `run` is refused with
the directory and the holder's pid. `graph-replicator query` takes the lock when it starts an engine of its
own, and when the lock is held it attaches to the running daemon's engine read-only instead. The SQLite
checkpoint store's "one owner" rule (DESIGN, Growing past one process) is this lock: whoever holds it may
open the store.

`check_data_dir` says why a directory cannot be used (not creatable, not a directory, not writable), for
`check-config` (which creates nothing) and `run` (which creates it), so both fail with the key and the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

DATA_DIR_KEY = "daemon.data_dir"
LOCK_NAME = "daemon.lock"


class DataDirError(Exception):
    """The data directory cannot be used; `reason` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{DATA_DIR_KEY}: {reason}")


class DataDirBusy(DataDirError):
    """Another process holds the data directory's lock."""

    def __init__(self, path: Path, holder_pid: int | None, holder: str) -> None:
        self.holder_pid, self.holder = holder_pid, holder
        who = f"pid {holder_pid}" if holder_pid else "a process that did not record its pid"
        what = f" ({holder})" if holder else ""
        super().__init__(path, f"{path} is in use by another graph-replicator process: {who}{what}")


def check_data_dir(path: Path, *, create: bool) -> str | None:
    """Why `path` cannot serve as the data directory, or None when it can.

    With `create`, a missing directory is created (with its parents) and writing is tried for real; without
    it nothing is changed: the nearest existing ancestor must be a directory this process may write into.
    """
    path = Path(path)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            return f"{path} exists and is not a directory"
        except OSError as exc:
            return f"cannot create {path}: {exc.strerror or exc}"
        if not path.is_dir():
            return f"{path} exists and is not a directory"
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            return f"cannot write in {path}: {exc.strerror or exc}"
        return None
    if path.exists():
        if not path.is_dir():
            return f"{path} exists and is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"cannot write in {path}: permission denied"
        return None
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"cannot create {path}: {ancestor} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot create {path}: {ancestor} is not writable"
    return None


class DataDirLock:
    """An exclusive, non-blocking lock on a data directory, held until `release` or the process ends."""

    def __init__(self, data_dir: Path, holder: str = "run") -> None:
        self.data_dir = Path(data_dir)
        self.holder = holder
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.data_dir / LOCK_NAME

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DataDirLock:
        """Take the lock; raise `DataDirBusy` naming the holder if another process has it, `DataDirError` if
        the directory is unusable."""
        if self._fd is not None:
            return self
        problem = check_data_dir(self.data_dir, create=True)
        if problem:
            raise DataDirError(self.data_dir, problem)
        # Python opens files close-on-exec, so child processes (the engines) never inherit the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, holder = _read_holder(fd)
            os.close(fd)
            raise DataDirBusy(self.data_dir, pid, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{self.holder}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (the file stays: removing it would race with a process about to lock it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> tuple[int | None, str]:
    """(pid, what it runs) as the lock's holder wrote them."""
    try:
        lines = os.pread(fd, 4096, 0).decode(errors="replace").splitlines()
        return int(lines[0]), (lines[1] if len(lines) > 1 else "")
    except (OSError, ValueError, IndexError):
        return None, ""
