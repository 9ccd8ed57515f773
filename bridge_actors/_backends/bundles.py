"""Unpacking an uploaded .ipa or zipped .app into a directory, after :mod:`.archives` said yes.

Blocking file work, meant for a worker thread. Every entry was checked from
the archive's table of contents first; while unpacking, each one is written
under the target directory only (its path built from checked components and
resolved again), never through a symlink, and never past the size it
declared, so an archive whose table lies about sizes stops at the limit.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .._errors import BadInput
from .archives import ArchiveLimits, BundleInfo, TooLarge, app_root, bundle_info, check_members

__all__ = ["AppBundle", "unpack_app"]

_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class AppBundle:
    path: Path  # the unpacked X.app directory
    info: BundleInfo


def unpack_app(
    field: str, archive: Path, target: Path, limits: ArchiveLimits, *, ipa: bool
) -> AppBundle:
    """Unpack the app of ``archive`` into the empty directory ``target``; BadInput if unsafe."""
    try:
        with zipfile.ZipFile(archive) as opened:
            members = check_members(field, opened.infolist(), limits)
            root = app_root(field, members, ipa=ipa)
            top = target.resolve()
            written = 0
            for member in members:
                if member.parts[: len(root)] != root:
                    continue  # only the app is unpacked; the rest of an .ipa is not needed
                path = top.joinpath(*member.parts)
                if path.resolve().parent != top.joinpath(*member.parts[:-1]).resolve():
                    raise BadInput(field, f"archive entry {member.info.filename[:80]!r} escapes")
                if member.is_dir:
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                written += _copy(field, opened, member.info, path, limits.max_bytes - written)
    except zipfile.BadZipFile as exc:
        raise BadInput(field, f"not a readable zip archive: {exc}") from None
    except (NotImplementedError, RuntimeError) as exc:  # an unknown compression, a password
        raise BadInput(field, f"archive cannot be unpacked: {exc}") from None
    app = top.joinpath(*root)
    plist = app / "Info.plist"
    info = bundle_info(field, plist.read_bytes())
    return AppBundle(app, info)


def _copy(field: str, opened: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, room: int) -> int:
    """Write one entry to ``path`` (which must not exist), at most its declared size."""
    limit = min(info.file_size, room)
    written = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(path, flags, 0o600)
    with os.fdopen(descriptor, "wb") as out, opened.open(info) as source:
        while chunk := source.read(_COPY_CHUNK):
            written += len(chunk)
            if written > limit:
                raise TooLarge(
                    field, f"archive entry {info.filename[:80]!r} is larger than declared"
                )
            out.write(chunk)
    return written
