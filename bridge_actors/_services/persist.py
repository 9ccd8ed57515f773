"""Sessions kept in one JSON file, so a restart restores them.

Two promises shape this module. A save never leaves a half-written file where
the real one was: the new text goes to a temp file beside it, is synced to disk
and renamed over the old one in one step, so a crash at any moment leaves either
the old file or the new one. And a load never throws sessions away quietly: a
file it cannot use, or records it must skip, are kept aside under a
``.corrupt-<UTC time>`` name, logged, and described in the result, so a person
can see what was lost and put it back.

Reading and writing the document is pure code (``encode_records``,
``render_document``, ``decode_document``); ``SessionStore`` is the thin shell
that runs the file system calls in worker threads and serialises them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from .._errors import BadInput

logger = logging.getLogger("bridge_actors.persist")

FORMAT_VERSION = 1
ID_KEY = "session_id"
_TEMP_SUFFIX = ".tmp"


# --- the document, in pure code ------------------------------------------------------------


def encode_records(
    records: Sequence[Mapping[str, Any]], required_keys: Collection[str] = (ID_KEY,)
) -> tuple[str, ...]:
    """Encode each record as one line of JSON, refusing anything a load would reject.

    Encoding happens when ``save`` is called, not when the file is written, so a
    caller that keeps mutating its dicts cannot change a snapshot already taken,
    and a record that cannot be stored fails in the caller that passed it.
    """
    lines: list[str] = []
    first_index_of: dict[str, int] = {}
    for index, record in enumerate(records):
        field = f"records[{index}]"
        if not isinstance(record, Mapping):
            raise BadInput(field, f"expected a mapping, got {type(record).__name__}")
        reason = _record_problem(record, required_keys)
        if reason is not None:
            raise BadInput(field, reason)
        session_id = record.get(ID_KEY)
        if session_id is not None:
            if session_id in first_index_of:
                raise BadInput(
                    field,
                    f"duplicate {ID_KEY} {session_id!r} "
                    f"(also records[{first_index_of[session_id]}])",
                )
            first_index_of[session_id] = index
        try:
            lines.append(json.dumps(dict(record), ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise BadInput(field, f"cannot be stored as JSON: {exc}") from None
    return tuple(lines)


def render_document(lines: Sequence[str], saved_at: float) -> bytes:
    """The file's bytes: a small header, then one session per line, easy to read and diff."""
    header = f'{{"version": {FORMAT_VERSION}, "saved_at": {json.dumps(saved_at)}, "sessions": ['
    return (header + "\n" + ",\n".join(lines) + "\n]}\n").encode("utf-8")


@dataclass(frozen=True)
class DecodedDocument:
    records: list[dict[str, Any]]
    unusable: str | None
    """Why the whole file cannot be used (then ``records`` is empty), or None."""
    rejected: tuple[str, ...]
    """One entry per record that was skipped, naming its index and the reason."""


RecordCheck = Callable[[Mapping[str, Any]], "str | None"]
"""What a store's owner finds wrong with one record (None: nothing), beyond its id."""


def decode_document(
    raw: bytes, required_keys: Collection[str] = (ID_KEY,), check: RecordCheck | None = None
) -> DecodedDocument:
    """Parse a sessions file, keeping every good record and saying exactly what was wrong.

    ``check`` judges each record on its owner's terms; a record it refuses is
    skipped like any other bad record, so one bad record never costs the others.
    """
    reason = _document_problem(raw)
    if reason is not None:
        return DecodedDocument(records=[], unusable=reason, rejected=())
    sessions = json.loads(raw)["sessions"]
    records: list[dict[str, Any]] = []
    rejected: list[str] = []
    first_index_of: dict[str, int] = {}
    for index, record in enumerate(sessions):
        if not isinstance(record, dict):
            rejected.append(f"#{index}: not a JSON object ({_json_kind(record)})")
            continue
        problem = _record_problem(record, required_keys)
        if problem is None and check is not None:
            problem = check(record)
            if problem is not None:
                problem = f"session {record.get(ID_KEY)!r:.80}: {problem}"
        if problem is not None:
            rejected.append(f"#{index}: {problem}")
            continue
        session_id = record.get(ID_KEY)
        if session_id is not None:
            if session_id in first_index_of:
                rejected.append(
                    f"#{index}: duplicate {ID_KEY} {session_id!r} "
                    f"(first at #{first_index_of[session_id]}, which was kept)"
                )
                continue
            first_index_of[session_id] = index
        records.append(record)
    return DecodedDocument(records=records, unusable=None, rejected=tuple(rejected))


def _document_problem(raw: bytes) -> str | None:
    if not raw.strip():
        return "is empty"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"is not UTF-8 text (bad byte at offset {exc.start})"
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        truncated = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        hint = "looks truncated" if truncated else "is not valid JSON"
        return f"{hint}: {exc}"
    except RecursionError:
        return "is not valid JSON: nested too deeply"
    if not isinstance(document, dict):
        return f"is not a JSON object at the top level ({_json_kind(document)})"
    if "version" not in document:
        return 'has no "version" field'
    version = document["version"]
    if version != FORMAT_VERSION or isinstance(version, bool):
        return f"has unknown version {version!r} (this build reads version {FORMAT_VERSION})"
    if not isinstance(document.get("sessions"), list):
        return f'has no "sessions" list ({_json_kind(document.get("sessions"))})'
    return None


def _record_problem(record: Mapping[str, Any], required_keys: Collection[str]) -> str | None:
    missing = [key for key in required_keys if key not in record]
    if missing:
        return "missing required key " + ", ".join(repr(key) for key in missing)
    if ID_KEY in record:
        session_id = record[ID_KEY]
        if not isinstance(session_id, str) or not session_id:
            return f"{ID_KEY} must be a non-empty string, not {session_id!r}"
    return None


def _json_kind(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return "found " + names.get(type(value), "number" if isinstance(value, int | float) else "?")


def quarantine_name(filename: str, now: float, attempt: int) -> str:
    """``sessions.json.corrupt-20250102T030405Z``; ``...Z-1``, ``...Z-2`` within the same second."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"{filename}.corrupt-{stamp}" + (f"-{attempt}" if attempt else "")


# --- blocking file system work, run in worker threads --------------------------------------


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash at any moment leaves the old file or the new.

    The temp file is this function's alone: every way out other than success
    removes it, including a cancellation of the waiting Trio task, seen through
    ``trio.from_thread.check_cancelled()`` just before the point of no return.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        trio.from_thread.check_cancelled()
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_directory(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` may write less than asked (a full disk, a signal); keep going until done."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable: it lives in the directory, not in the file."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems cannot sync a directory; the rename is still atomic there.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _remove_leftover_temp_files(path: Path) -> list[Path]:
    """Remove what a save cut short by a crash left behind; they never hold the only copy."""
    removed = []
    try:
        candidates = list(path.parent.iterdir())
    except FileNotFoundError:
        return removed
    for candidate in candidates:
        name = candidate.name
        if name.startswith(f".{path.name}.") and name.endswith(_TEMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def _reserve_aside(path: Path, now: float) -> Path:
    """Create an empty file under a fresh quarantine name; creating it exclusively makes it ours."""
    for attempt in range(10_000):
        candidate = path.with_name(quarantine_name(path.name, now, attempt))
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(errno.EEXIST, "no free quarantine name", str(path))


def _move_aside(path: Path, now: float) -> Path:
    aside = _reserve_aside(path, now)
    try:
        os.replace(path, aside)
    except BaseException:
        with contextlib.suppress(OSError):
            aside.unlink()
        raise
    return aside


def _copy_aside(path: Path, raw: bytes, now: float) -> Path:
    aside = _reserve_aside(path, now)
    try:
        _write_atomically(aside, raw)
    except BaseException:
        with contextlib.suppress(OSError):
            aside.unlink()
        raise
    return aside


@dataclass(frozen=True)
class _LoadOutcome:
    decoded: DecodedDocument | None
    aside: Path | None
    temp_files_removed: list[Path]


def _load_from_disk(
    path: Path, required_keys: Collection[str], check: RecordCheck | None, now: float
) -> _LoadOutcome:
    removed = _remove_leftover_temp_files(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _LoadOutcome(decoded=None, aside=None, temp_files_removed=removed)
    decoded = decode_document(raw, required_keys, check)
    aside = None
    if decoded.unusable is not None:
        aside = _move_aside(path, now)
    elif decoded.rejected:
        aside = _copy_aside(path, raw, now)
    return _LoadOutcome(decoded=decoded, aside=aside, temp_files_removed=removed)


# --- the Trio shell ------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    records: list[dict[str, Any]]
    """The valid session records, in file order."""
    problem: str | None
    """What was wrong with the file, for a person to read; None when it was fine or absent."""
    quarantined: Path | None
    """Where the file (or a copy of it) was kept aside, when something was wrong."""


@dataclass(frozen=True)
class StoreStatistics:
    path: str
    save_requests: int
    """Calls to ``save``; more than ``saves`` when concurrent calls were coalesced."""
    saves: int
    """Snapshots actually written to disk."""
    save_failures: int
    last_error: str | None
    """The error of the last failed write; cleared by the next successful one."""
    last_saved_at: float | None
    """Epoch seconds of the last successful write."""
    loads: int
    quarantined_files: int


@dataclass(frozen=True)
class _Snapshot:
    generation: int
    lines: tuple[str, ...]


class SessionStore:
    """One JSON file of session records, written atomically and read defensively.

    Concurrent saves are serialised and coalesced: while one snapshot is being
    written, newer calls only replace the snapshot waiting its turn, so a burst of
    N saves costs two writes, not N. Each ``save`` returns once a snapshot at least
    as new as its own is on disk, or raises.
    """

    def __init__(
        self,
        state_dir: Path,
        filename: str = "sessions.json",
        required_keys: Collection[str] = (ID_KEY,),
        *,
        check: RecordCheck | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not filename or filename in (".", "..") or "/" in filename or os.sep in filename:
            raise BadInput("filename", f"must be a plain file name, not {filename!r}")
        if isinstance(required_keys, str):
            raise BadInput("required_keys", "must be a collection of key names, not one string")
        self._path = Path(state_dir) / filename
        self._required_keys = tuple(required_keys)
        self._check = check
        # Epoch time only labels things for people (saved_at, quarantine names); no
        # timing decision depends on it, so it does not come from the Trio clock.
        self._wall_clock = wall_clock
        self._lock = trio.Lock()
        self._newest = _Snapshot(generation=0, lines=())
        self._generation_on_disk = 0
        self._save_requests = 0
        self._saves = 0
        self._save_failures = 0
        self._last_error: str | None = None
        self._last_saved_at: float | None = None
        self._loads = 0
        self._quarantined_files = 0

    @property
    def path(self) -> Path:
        return self._path

    async def save(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Persist ``records`` (replacing what was stored). Raises ``BadInput`` or ``OSError``."""
        lines = encode_records(records, self._required_keys)
        self._save_requests += 1
        mine = _Snapshot(generation=self._save_requests, lines=lines)
        self._newest = mine
        async with self._lock:
            if self._generation_on_disk >= mine.generation:
                return
            await self._write(self._newest)

    async def _write(self, snapshot: _Snapshot) -> None:
        saved_at = self._wall_clock()
        data = render_document(snapshot.lines, saved_at)
        try:
            await trio.to_thread.run_sync(_write_atomically, self._path, data)
        except OSError as exc:
            self._save_failures += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            logger.error("could not save sessions to %s: %s", self._path, exc)
            raise
        self._generation_on_disk = snapshot.generation
        self._saves += 1
        self._last_error = None
        self._last_saved_at = saved_at

    async def load(self) -> LoadResult:
        """Read the stored sessions. A bad file is kept aside and described, never dropped.

        Raises ``OSError`` only when the file system itself fails (unreadable file,
        no room to keep a bad file aside); then nothing was moved or changed.
        """
        async with self._lock:
            self._loads += 1
            outcome = await trio.to_thread.run_sync(
                _load_from_disk, self._path, self._required_keys, self._check, self._wall_clock()
            )
        for leftover in outcome.temp_files_removed:
            logger.info("removed %s, left by a save that did not finish", leftover)
        decoded = outcome.decoded
        if decoded is None:
            return LoadResult(records=[], problem=None, quarantined=None)
        if outcome.aside is not None:
            self._quarantined_files += 1
        if decoded.unusable is not None:
            problem = (
                f"{self._path} {decoded.unusable}; no sessions were restored; "
                f"the file was moved to {outcome.aside}"
            )
        elif decoded.rejected:
            total = len(decoded.records) + len(decoded.rejected)
            problem = (
                f"{self._path}: skipped {len(decoded.rejected)} of {total} session records "
                f"({'; '.join(decoded.rejected)}); a copy of the file was kept as {outcome.aside}"
            )
        else:
            return LoadResult(records=decoded.records, problem=None, quarantined=None)
        logger.error("%s", problem)
        return LoadResult(records=decoded.records, problem=problem, quarantined=outcome.aside)

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            path=str(self._path),
            save_requests=self._save_requests,
            saves=self._saves,
            save_failures=self._save_failures,
            last_error=self._last_error,
            last_saved_at=self._last_saved_at,
            loads=self._loads,
            quarantined_files=self._quarantined_files,
        )
