"""The device actions as ``xcrun simctl`` says them: argument lists and parsed output (pure).

``simctl listapps`` prints a property list in the old OpenStep text format
(``{ "com.apple.x" = { ApplicationType = System; ... }; }``), which plistlib
does not read; :func:`parse_openstep` does, and XML or binary plists go
through plistlib. ``ps aux`` inside the simulator lists its processes. Nothing
here runs a tool.
"""

from __future__ import annotations

import plistlib
import re
from collections.abc import Mapping
from typing import Any

from .._actions import DeviceProcess, InstalledApp

__all__ = ["parse_listapps", "parse_openstep", "parse_processes"]

_UNQUOTED = re.compile(r"[A-Za-z0-9_$+/:.\-]+")
_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    '"': '"',
    "\\": "\\",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
}
MAX_DEPTH = 32


class _OpenStep:
    """A recursive-descent reader of the OpenStep plist text format."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def _skip(self) -> None:
        text = self.text
        while self.at < len(text):
            if text[self.at].isspace():
                self.at += 1
            elif text.startswith("//", self.at):
                end = text.find("\n", self.at)
                self.at = len(text) if end < 0 else end + 1
            elif text.startswith("/*", self.at):
                end = text.find("*/", self.at + 2)
                if end < 0:
                    raise ValueError("unterminated comment")
                self.at = end + 2
            else:
                return

    def _expect(self, char: str) -> None:
        self._skip()
        if not self.text.startswith(char, self.at):
            found = self.text[self.at : self.at + 10] or "the end"
            raise ValueError(f"expected {char!r} at {self.at}, found {found!r}")
        self.at += 1

    def _peek(self) -> str:
        self._skip()
        return self.text[self.at] if self.at < len(self.text) else ""

    def value(self, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH}")
        char = self._peek()
        if char == "{":
            return self._dict(depth)
        if char == "(":
            return self._array(depth)
        if char == '"':
            return self._quoted()
        if char == "<":
            end = self.text.find(">", self.at)
            if end < 0:
                raise ValueError("unterminated data")
            data = re.sub(r"\s", "", self.text[self.at + 1 : end])
            self.at = end + 1
            return bytes.fromhex(data)
        match = _UNQUOTED.match(self.text, self.at)
        if match is None:
            raise ValueError(f"unexpected {self.text[self.at : self.at + 10] or 'end'!r}")
        self.at = match.end()
        return match.group()

    def _dict(self, depth: int) -> dict[str, Any]:
        self._expect("{")
        result: dict[str, Any] = {}
        while self._peek() != "}":
            key = self.value(depth + 1)
            if not isinstance(key, str):
                raise ValueError("a dictionary key must be a string")
            self._expect("=")
            result[key] = self.value(depth + 1)
            self._expect(";")
        self._expect("}")
        return result

    def _array(self, depth: int) -> list[Any]:
        self._expect("(")
        result: list[Any] = []
        while self._peek() != ")":
            result.append(self.value(depth + 1))
            if self._peek() != ",":
                break
            self._expect(",")
        self._expect(")")
        return result

    def _quoted(self) -> str:
        self._expect('"')
        out: list[str] = []
        text = self.text
        while True:
            if self.at >= len(text):
                raise ValueError("unterminated string")
            char = text[self.at]
            self.at += 1
            if char == '"':
                return "".join(out)
            if char == "\\":
                if self.at >= len(text):
                    raise ValueError("unterminated string")
                code = text[self.at]
                self.at += 1
                if code in _ESCAPES:
                    out.append(_ESCAPES[code])
                elif code == "U":
                    digits = text[self.at : self.at + 4]
                    if not re.fullmatch(r"[0-9A-Fa-f]{4}", digits):
                        raise ValueError("bad \\U escape")
                    out.append(chr(int(digits, 16)))
                    self.at += 4
                else:
                    out.append(code)
            else:
                out.append(char)


def parse_openstep(text: str) -> Any:
    """The value of an OpenStep-format plist; ValueError if it is not one."""
    reader = _OpenStep(text)
    value = reader.value()
    reader._skip()
    if reader.at != len(text):
        raise ValueError(f"trailing text at {reader.at}")
    return value


def _plist(data: bytes) -> Any:
    if data.lstrip().startswith((b"<?xml", b"<plist", b"bplist")):
        try:
            return plistlib.loads(data.lstrip())
        except Exception as exc:  # plistlib raises several kinds
            raise ValueError(f"unreadable plist: {exc}") from None
    return parse_openstep(data.decode("utf-8", "replace"))


def _text(entry: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = entry.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def parse_listapps(data: bytes) -> list[InstalledApp]:
    """The apps of ``simctl listapps <udid>``, user apps first, each by bundle id."""
    apps = _plist(data)
    if not isinstance(apps, dict):
        raise ValueError("simctl listapps did not print a dictionary")
    found = []
    for key, entry in apps.items():
        if not isinstance(entry, dict):
            continue
        bundle_id = _text(entry, "CFBundleIdentifier") or key
        path = _text(entry, "Path", "Bundle").removeprefix("file://")
        found.append(
            InstalledApp(
                bundle_id=bundle_id,
                app_name=_text(entry, "CFBundleDisplayName", "CFBundleName", "CFBundleExecutable")
                or bundle_id,
                app_type=_text(entry, "ApplicationType") or "Unknown",
                path=path,
                version=_text(entry, "CFBundleShortVersionString", "CFBundleVersion"),
            )
        )
    found.sort(key=lambda app: (app.app_type != "User", app.bundle_id))
    return found


def parse_processes(output: str) -> list[DeviceProcess]:
    """``ps aux``: USER PID %CPU %MEM VSZ RSS TT STAT STARTED TIME COMMAND (the header skipped)."""
    found = []
    for line in output.splitlines()[1:]:
        parts = line.split(None, 10)
        if len(parts) == 11:
            command = parts[10].split()[0] if parts[10].split() else parts[10]
            found.append(DeviceProcess(parts[1], command.rpartition("/")[2], parts[2], parts[3]))
    return found
