"""One server per state directory, held with an OS file lock.

Two servers started with the default settings share
``$XDG_STATE_HOME/bridge_actors`` and would each overwrite the other's
``sessions.json`` with its own sessions. The bridge therefore holds an
exclusive ``flock`` on ``<state_dir>/lock`` for as long as it runs, and a
second bridge on the same directory is refused with the directory and the pid
of the holder. The kernel releases the lock when the holder exits, however it
exits, so a crash never leaves a stale lock behind; the pid written into the
file is only there to be reported.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .._errors import BridgeError, StateDirInUse

__all__ = ["LOCK_FILENAME", "hold_state_dir"]

LOCK_FILENAME = "lock"
_MAX_PID_BYTES = 32


def _holder_pid(fd: int) -> int | None:
    """The pid the holder wrote into the lock file, if it reads as one."""
    try:
        text = os.pread(fd, _MAX_PID_BYTES, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def hold_state_dir(state_dir: Path) -> Iterator[Path]:
    """Hold ``state_dir`` for this block; yields the lock file's path.

    Creates the directory if need be. Raises StateDirInUse naming the directory
    and the pid holding it, or BridgeError naming the directory when it cannot be
    used at all (not a directory, no permission).
    """
    state_dir = Path(state_dir)
    path = state_dir / LOCK_FILENAME
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise BridgeError(
            f"state directory {state_dir} cannot be used: {exc.strerror or exc}"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder_pid(fd)
            holder = f"pid {pid}" if pid is not None else "a process whose pid is unknown"
            raise StateDirInUse(
                f"state directory {state_dir} is in use by another bridge_actors server "
                f"({holder}); stop it or give this one its own state_dir (--state-dir)",
                state_dir=state_dir,
                pid=pid,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            # The pid goes first: a reader that wins the lock next must not report us.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
