"""Files put into and taken out of a simulator's data directory or an app's container.

A ``device_path`` arrives as checked components (:func:`.action_fields.device_path_parts`);
here it is walked from the base directory one component at a time with
``lstat``, so no component may be a symlink (one could point anywhere on the
host), and the file itself is opened with ``O_NOFOLLOW``. Blocking file work:
every function is run in a worker thread.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from .._errors import BadInput

__all__ = ["open_for_pull", "push_into"]

_CHUNK = 1024 * 1024


def _walk(base: Path, parts: tuple[str, ...], *, create: bool) -> Path:
    """The path of ``parts`` under ``base``, every directory on the way a real directory."""
    if not base.is_dir() or base.is_symlink():
        raise BadInput("device_path", "the device's directory does not exist")
    here = base
    for part in parts[:-1]:
        here = here / part
        try:
            mode = os.lstat(here).st_mode
        except FileNotFoundError:
            if not create:
                raise BadInput("device_path", f"no such directory: {part!r}") from None
            os.mkdir(here, 0o755)
            continue
        if stat.S_ISLNK(mode):
            raise BadInput("device_path", f"{part!r} is a symlink; refusing to follow it")
        if not stat.S_ISDIR(mode):
            raise BadInput("device_path", f"{part!r} is not a directory")
    target = here / parts[-1]
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return target
    if stat.S_ISLNK(mode):
        raise BadInput("device_path", f"{parts[-1]!r} is a symlink; refusing to follow it")
    if not stat.S_ISREG(mode):
        raise BadInput("device_path", f"{parts[-1]!r} is not a regular file")
    return target


def push_into(base: Path, parts: tuple[str, ...], source: Path) -> Path:
    """Copy ``source`` to ``parts`` under ``base`` (replacing a file there); its path."""
    target = _walk(base, parts, create=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    descriptor = os.open(target, flags, 0o644)
    with os.fdopen(descriptor, "wb") as out, open(source, "rb") as data:
        shutil.copyfileobj(data, out, _CHUNK)
    return target


def open_for_pull(base: Path, parts: tuple[str, ...], max_bytes: int) -> tuple[int, int]:
    """An open descriptor of the file ``parts`` under ``base`` and its size."""
    target = _walk(base, parts, create=False)
    try:
        descriptor = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise BadInput("device_path", f"no such file: {'/'.join(parts)!r}") from None
    except OSError as exc:
        raise BadInput("device_path", f"cannot be read: {exc.strerror}") from None
    size = os.fstat(descriptor).st_size
    if size > max_bytes:
        os.close(descriptor)
        raise BadInput("device_path", f"larger than {max_bytes} bytes")
    return descriptor, size
