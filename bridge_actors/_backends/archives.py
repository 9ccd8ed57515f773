"""What an uploaded file is, and whether an app archive is safe to unpack: pure checks.

An upload says what it is by its name (``.ipa``, ``.zip``, ``.jpg``, ``.mov``...);
the first bytes of its content say what it really is, and the two must agree.
An archive's table of contents (the ``zipfile.ZipInfo`` of each entry) says
where every entry would land, how large it claims to be and how far it
expands; an archive is refused before a single byte is unpacked if any entry
would land outside the directory it is unpacked into (``../``, an absolute or
drive path, a backslash), is a symlink, is encrypted, or if the archive holds
too many entries, too many bytes, or an entry that expands like a zip bomb.
The app inside is found by its layout (``Payload/X.app/`` in an .ipa, one
top-level ``X.app/`` in a .zip) and named by its ``Info.plist`` (binary or
XML), never by guessing.

Nothing here touches a file or an event loop: every function takes bytes or
``ZipInfo`` values, so the property tests drive them with generated archives.
"""

from __future__ import annotations

import plistlib
import re
import stat
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from .._errors import BadInput

__all__ = [
    "APP_EXTENSIONS",
    "PHOTO_EXTENSIONS",
    "RATIO_FLOOR",
    "VIDEO_EXTENSIONS",
    "ArchiveLimits",
    "BundleInfo",
    "Member",
    "TooLarge",
    "app_root",
    "bundle_info",
    "check_content",
    "check_members",
    "sniff",
]

SNIFF_BYTES = 64  # how much of a file's start :func:`sniff` needs
RATIO_FLOOR = 1024 * 1024  # entries smaller than this may expand as far as they like
MAX_PLIST_BYTES = 4 * 1024 * 1024
MAX_NAME_BYTES = 1024  # one entry's path inside an archive

APP_EXTENSIONS: Mapping[str, frozenset[str]] = {
    ".ipa": frozenset({"zip"}),
    ".zip": frozenset({"zip"}),
}
PHOTO_EXTENSIONS: Mapping[str, frozenset[str]] = {
    ".jpg": frozenset({"jpeg"}),
    ".jpeg": frozenset({"jpeg"}),
    ".png": frozenset({"png"}),
    ".gif": frozenset({"gif"}),
    ".heic": frozenset({"heif"}),
    ".heif": frozenset({"heif"}),
}
VIDEO_EXTENSIONS: Mapping[str, frozenset[str]] = {
    ".mp4": frozenset({"mp4"}),
    ".m4v": frozenset({"mp4"}),
    ".mov": frozenset({"mp4", "quicktime"}),
    ".avi": frozenset({"avi"}),
    ".mkv": frozenset({"matroska"}),
}

_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
# Atoms a QuickTime file without an ftyp box starts with.
_QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
_BUNDLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,254}")


class TooLarge(BadInput):
    """An upload or archive over a limit: answered 413 rather than 400."""


def sniff(head: bytes) -> str | None:
    """What the first bytes of a file say it is: "zip", "jpeg", "png", "gif", "heif",
    "mp4", "quicktime", "avi", "matroska"; None when they match none of these."""
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return "heif"
        return "quicktime" if brand == b"qt  " else "mp4"
    if len(head) >= 8 and head[4:8] in _QUICKTIME_ATOMS:
        return "quicktime"
    return None


def check_content(
    field: str, filename: str, head: bytes, kinds: Mapping[str, frozenset[str]]
) -> str:
    """The lower-case extension of ``filename`` if it is one of ``kinds`` and ``head``
    (the file's first bytes) is what that extension claims; else BadInput naming ``field``."""
    suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    expected = kinds.get(suffix)
    if expected is None:
        allowed = ", ".join(kinds)
        raise BadInput(
            field, f"{filename!r}: must be one of {allowed}, not {suffix or 'no extension'!r}"
        )
    if not head:
        raise BadInput(field, f"{filename!r}: is empty")
    found = sniff(head[:SNIFF_BYTES])
    if found not in expected:
        what = found or "unrecognised data"
        raise BadInput(field, f"{filename!r}: is not a {suffix} file (its content is {what})")
    return suffix


# --- archives -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_entries: int
    max_bytes: int  # unpacked, all entries together
    max_ratio: int  # unpacked / packed, for each entry over RATIO_FLOOR


@dataclass(frozen=True, slots=True)
class Member:
    """One entry that may be unpacked: where it lands (a relative path) and what it holds."""

    info: zipfile.ZipInfo
    parts: tuple[str, ...]
    is_dir: bool


def _parts(field: str, name: str) -> tuple[str, ...]:
    """The path components of an entry name, or BadInput if it could land outside."""
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise BadInput(field, f"archive entry name longer than {MAX_NAME_BYTES} bytes")
    if "\x00" in name or "\\" in name:
        raise BadInput(field, f"archive entry {name[:80]!r} has a NUL or backslash in its path")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise BadInput(field, f"archive entry {name[:80]!r} has an absolute path")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise BadInput(field, f"archive entry {name[:80]!r} escapes the archive with '..'")
    if not parts:
        raise BadInput(field, f"archive entry {name[:80]!r} has no name")
    return parts


def _mode(info: zipfile.ZipInfo) -> int:
    return info.external_attr >> 16 if info.create_system == 3 else 0


def check_members(
    field: str, infos: Sequence[zipfile.ZipInfo], limits: ArchiveLimits
) -> list[Member]:
    """Every entry of an archive, checked before anything is unpacked.

    Raises TooLarge (too many entries, too many bytes, a zip-bomb ratio) or
    BadInput (empty, a path escape, a symlink or other special file, an
    encrypted or duplicate entry), each naming ``field`` and the entry."""
    if not infos:
        raise BadInput(field, "archive is empty")
    if len(infos) > limits.max_entries:
        raise TooLarge(field, f"archive has {len(infos)} entries; at most {limits.max_entries}")
    members: list[Member] = []
    seen: dict[tuple[str, ...], bool] = {}
    total = 0
    for info in infos:
        parts = _parts(field, info.filename)
        mode = _mode(info)
        if stat.S_ISLNK(mode):
            raise BadInput(field, f"archive entry {info.filename[:80]!r} is a symlink")
        kind = stat.S_IFMT(mode)
        is_dir = info.is_dir() or kind == stat.S_IFDIR
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise BadInput(
                field, f"archive entry {info.filename[:80]!r} is not a file or directory"
            )
        if info.flag_bits & 0x1:
            raise BadInput(field, f"archive entry {info.filename[:80]!r} is encrypted")
        if parts in seen and not (is_dir and seen[parts]):
            raise BadInput(field, f"archive entry {info.filename[:80]!r} appears twice")
        seen[parts] = is_dir
        total += info.file_size
        if total > limits.max_bytes:
            raise TooLarge(field, f"archive unpacks to more than {limits.max_bytes} bytes")
        packed = max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR and info.file_size > limits.max_ratio * packed:
            raise TooLarge(
                field,
                f"archive entry {info.filename[:80]!r} expands {info.file_size // packed} times; "
                f"at most {limits.max_ratio}",
            )
        members.append(Member(info, parts, is_dir))
    packed_total = max(sum(info.compress_size for info in infos), 1)
    if total > RATIO_FLOOR and total > limits.max_ratio * packed_total:
        # Many small entries, each under the floor, can make a bomb together.
        raise TooLarge(
            field,
            f"archive expands {total // packed_total} times; at most {limits.max_ratio}",
        )
    _no_file_under_a_file(field, seen)
    return members


def _no_file_under_a_file(field: str, seen: Mapping[tuple[str, ...], bool]) -> None:
    for parts in seen:
        for depth in range(1, len(parts)):
            if seen.get(parts[:depth]) is False:
                raise BadInput(field, f"archive entry {'/'.join(parts)[:80]!r} is under a file")


def app_root(field: str, members: Sequence[Member], *, ipa: bool) -> tuple[str, ...]:
    """The path of the one app bundle in the archive: ``Payload/X.app`` in an .ipa, the
    one top-level ``X.app`` of a .zip (macOS's ``__MACOSX/`` ignored). BadInput otherwise."""
    roots: set[tuple[str, ...]] = set()
    for member in members:
        parts = member.parts
        if parts[0] == "__MACOSX":
            continue
        if ipa:
            if parts[0] == "Payload" and len(parts) >= 2 and parts[1].endswith(".app"):
                roots.add(parts[:2])
        elif parts[0].endswith(".app") and (len(parts) > 1 or member.is_dir):
            roots.add(parts[:1])
    where = "Payload/ of the .ipa" if ipa else "the top level of the .zip"
    if not roots:
        raise BadInput(field, f"no .app bundle in {where}")
    if len(roots) > 1:
        names = ", ".join(sorted("/".join(root) for root in roots))
        raise BadInput(field, f"more than one .app bundle in {where}: {names}")
    (root,) = roots
    if not any(m.parts == (*root, "Info.plist") and not m.is_dir for m in members):
        raise BadInput(field, f"{'/'.join(root)} has no Info.plist")
    return root


@dataclass(frozen=True, slots=True)
class BundleInfo:
    bundle_id: str
    name: str
    version: str

    def to_dict(self) -> dict[str, str]:
        return {"bundle_id": self.bundle_id, "name": self.name, "version": self.version}


def _text(plist: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = plist.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    return ""


def bundle_info(field: str, data: bytes) -> BundleInfo:
    """The bundle id, name and version an ``Info.plist`` (binary or XML) declares."""
    if len(data) > MAX_PLIST_BYTES:
        raise TooLarge(field, f"Info.plist is larger than {MAX_PLIST_BYTES} bytes")
    try:
        plist = plistlib.loads(data)
    except Exception as exc:  # plistlib raises several kinds (InvalidFileException, XML errors)
        raise BadInput(field, f"Info.plist is not a readable plist: {exc}") from None
    if not isinstance(plist, dict):
        raise BadInput(field, "Info.plist is not a dictionary")
    bundle_id = plist.get("CFBundleIdentifier")
    if not isinstance(bundle_id, str) or not _BUNDLE_ID.fullmatch(bundle_id):
        raise BadInput(field, f"Info.plist has no valid CFBundleIdentifier ({bundle_id!r:.80})")
    name = _text(plist, "CFBundleDisplayName", "CFBundleName", "CFBundleExecutable") or bundle_id
    version = _text(plist, "CFBundleShortVersionString", "CFBundleVersion")
    return BundleInfo(bundle_id, name, version)


def is_bundle_id(text: str) -> bool:
    return _BUNDLE_ID.fullmatch(text) is not None
