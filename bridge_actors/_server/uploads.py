"""Multipart uploads streamed to a private temporary directory, never held whole in memory.

An app, a batch of photos or a file to push may be gigabytes; the body is
read in chunks as it arrives, cut into parts by ``python-multipart``'s
streaming parser, and each file part is appended to its own file in a
directory only this process can read (``mkdtemp``, mode 0700). The directory
and everything in it are removed when the ``async with`` ends, whatever ends
it: done, refused, the client gone, or the server shutting down.

The routes that take uploads get a larger body limit than the rest of the API
(:class:`UploadRequest`), and the limit is checked again here on the bytes that
actually arrive. Plain form fields of the same body stay small and in memory.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from quart import Request, request

from .._backends.archives import SNIFF_BYTES, TooLarge
from .._errors import BadInput

__all__ = [
    "UPLOAD_ROUTES",
    "Upload",
    "UploadSlots",
    "UploadedFile",
    "UploadsBusy",
    "receive_upload",
    "upload_request_class",
]

# The routes whose bodies are uploads, given the larger limit.
UPLOAD_ROUTES = re.compile(
    r"/api/sessions/[^/]+/(?:apps/install(?:-and-launch)?|media/(?:photos|videos)/add|files/push)"
)
MAX_FILES = 100
MAX_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024
FRAMING_BYTES = 64 * 1024  # room for part headers and short form fields around the files
_FLUSH_BYTES = 1024 * 1024  # a part's data is written out in pieces this large
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def upload_request_class(base: type[Request], max_upload_bytes: int) -> type[Request]:
    """The app's request class ``base``, whose body limit is ``max_upload_bytes`` on the
    upload routes (plus room for the multipart framing) and the app's own everywhere else."""

    class UploadRequest(base):  # type: ignore[valid-type,misc]
        def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any) -> None:
            if method == "POST" and UPLOAD_ROUTES.fullmatch(path):
                kwargs["max_content_length"] = max_upload_bytes + FRAMING_BYTES
            super().__init__(method, scheme, path, *args, **kwargs)

    return UploadRequest


class UploadsBusy(Exception):
    """The server is receiving as many uploads as it takes at once; try again shortly."""


@dataclass(frozen=True, slots=True)
class UploadStatistics:
    limit: int
    active: int
    refused: int


class UploadSlots:
    """How many uploads are being received at once, capped server-wide.

    Each upload holds a temporary directory and disk bandwidth until its body
    has arrived, so a client opening many at once is refused rather than queued:
    a queue would hold their connections and bodies anyway."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.refused = 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        if self.active >= self.limit:
            self.refused += 1
            raise UploadsBusy(f"too many uploads at once (at most {self.limit}); retry shortly")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    def statistics(self) -> UploadStatistics:
        return UploadStatistics(self.limit, self.active, self.refused)


@dataclass(slots=True)
class UploadedFile:
    field: str
    filename: str  # as the client named it (its last path component)
    path: Path  # where its bytes are, inside the upload's directory
    size: int = 0
    head: bytes = b""  # its first bytes, for checking what it is


@dataclass(slots=True)
class Upload:
    directory: Path  # private, removed when the upload ends
    files: list[UploadedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    def files_of(self, name: str) -> list[UploadedFile]:
        return [f for f in self.files if f.field == name]


class _Parts:
    """The parser's callbacks: what the current part is, and data waiting to be written."""

    def __init__(self, upload: Upload, max_bytes: int) -> None:
        self.upload = upload
        self.max_bytes = max_bytes
        self.received = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self.current: UploadedFile | None = None
        self._field_name: str | None = None
        self._field_value = bytearray()
        self.pending: dict[int, bytearray] = {}  # file number -> data not yet written

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._headers = {}
        self.current = None
        self._field_name = None
        self._field_value.clear()

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is None:
            if len(self.upload.fields) >= MAX_FIELDS:
                raise BadInput("body", f"more than {MAX_FIELDS} form fields")
            self._field_name = name
            return
        if len(self.upload.files) >= MAX_FILES:
            raise TooLarge("body", f"more than {MAX_FILES} files in one upload")
        original = filename.decode("utf-8", "replace").replace("\\", "/").rpartition("/")[2]
        number = len(self.upload.files)
        safe = _SAFE_NAME.sub("_", original)[-100:] or "file"
        path = self.upload.directory / f"{number}-{safe}"
        self.current = UploadedFile(name, original, path)
        self.upload.files.append(self.current)
        self.pending[number] = bytearray()  # every file exists, even an empty one

    def _data(self, data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if self.current is not None:
            if len(self.current.head) < SNIFF_BYTES:
                self.current.head += piece[: SNIFF_BYTES - len(self.current.head)]
            self.current.size += len(piece)
            self.pending.setdefault(len(self.upload.files) - 1, bytearray()).extend(piece)
        else:
            self._field_value += piece
            if len(self._field_value) > MAX_FIELD_BYTES:
                raise BadInput(self._field_name or "body", f"longer than {MAX_FIELD_BYTES} bytes")

    def _end(self) -> None:
        if self.current is None and self._field_name is not None:
            self.upload.fields[self._field_name] = self._field_value.decode("utf-8", "replace")

    @property
    def pending_bytes(self) -> int:
        return sum(map(len, self.pending.values()))

    def flush(self) -> None:
        """Append each file's waiting data to its file (blocking: run in a thread)."""
        for number, data in list(self.pending.items()):
            with open(self.upload.files[number].path, "ab") as out:
                out.write(data)
            del self.pending[number]


def _boundary() -> bytes:
    mimetype, options = parse_options_header(request.headers.get("Content-Type", ""))
    if mimetype != b"multipart/form-data" or not options.get(b"boundary"):
        raise BadInput("body", "must be multipart/form-data with a boundary")
    return options[b"boundary"]


@asynccontextmanager
async def receive_upload(max_bytes: int, slots: UploadSlots) -> AsyncIterator[Upload]:
    """The request's multipart body, its files on disk, for the duration of the block.

    Raises BadInput (not multipart, malformed), TooLarge (over ``max_bytes`` or
    :data:`MAX_FILES`) or UploadsBusy (``slots`` all taken); either way nothing is
    left on disk."""
    boundary = _boundary()
    declared = request.content_length
    if declared is not None and declared > max_bytes + FRAMING_BYTES:
        raise TooLarge("body", f"upload larger than {max_bytes} bytes")
    with slots.hold():
        async with _received(boundary, max_bytes) as upload:
            yield upload


@asynccontextmanager
async def _received(boundary: bytes, max_bytes: int) -> AsyncIterator[Upload]:
    directory = Path(await trio.to_thread.run_sync(tempfile.mkdtemp, "", "bridge-upload-"))
    upload = Upload(directory)
    parts = _Parts(upload, max_bytes)
    try:
        await _read_body(MultipartParser(boundary, parts.callbacks()), parts, max_bytes)
        yield upload
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, directory, True)


async def _read_body(parser: MultipartParser, parts: _Parts, max_bytes: int) -> None:
    try:
        async for chunk in request.body:
            parts.received += len(chunk)
            parser.write(chunk)
            if sum(f.size for f in parts.upload.files) > max_bytes:
                raise TooLarge("body", f"upload larger than {max_bytes} bytes")
            if parts.pending_bytes >= _FLUSH_BYTES:
                await trio.to_thread.run_sync(parts.flush)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadInput("body", f"malformed multipart body: {exc}") from None
    await trio.to_thread.run_sync(parts.flush)
