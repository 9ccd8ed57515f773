from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from bridge_actors._errors import BadInput
from bridge_actors._services.persist import (
    SessionStore,
    decode_document,
    encode_records,
    quarantine_name,
    render_document,
)

EPOCH = 1_700_000_000.0  # 2023-11-14T22:13:20Z
STAMP = "20231114T221320Z"


def session(sid: str, **extra: object) -> dict[str, object]:
    return {"session_id": sid, "device_type": "iPhone 15", "ios_version": "17.0", **extra}


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def asides(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if ".corrupt-" in p.name)


class FsyncGate:
    """Holds the first ``os.fsync`` of a save in its worker thread until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        real_fsync = os.fsync

        def gated_fsync(fd: int) -> None:
            self.entered.set()
            if not self.release.wait(timeout=10):
                raise TimeoutError("the test never opened the gate")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", gated_fsync)

    async def wait_entered(self) -> None:
        assert await trio.to_thread.run_sync(self.entered.wait, 10)


# --- the document, without an event loop ---------------------------------------------------


def test_document_round_trip_in_pure_code() -> None:
    records = [session("a", nested={"k": [1, 2.5, None]}), session("ü-✓", note="line\nbreak")]
    raw = render_document(encode_records(records), saved_at=EPOCH)
    decoded = decode_document(raw)
    assert decoded.records == records
    assert decoded.unusable is None
    assert decoded.rejected == ()
    document = json.loads(raw)
    assert document["version"] == 1
    assert document["saved_at"] == EPOCH


def test_empty_document_is_valid() -> None:
    decoded = decode_document(render_document(encode_records([]), saved_at=EPOCH))
    assert decoded.records == []
    assert decoded.unusable is None


@pytest.mark.parametrize(
    ("records", "field", "words"),
    [
        ([session("a"), "not a dict"], "records[1]", "expected a mapping"),
        ([{"device_type": "x"}], "records[0]", "missing required key 'session_id'"),
        ([session("a"), session("a")], "records[1]", "duplicate session_id 'a'"),
        ([session("")], "records[0]", "non-empty string"),
        ([session("a", fps=float("nan"))], "records[0]", "cannot be stored as JSON"),
        ([session("a", when=object())], "records[0]", "cannot be stored as JSON"),
    ],
)
def test_encoding_refuses_what_a_load_would_reject(
    records: list[object], field: str, words: str
) -> None:
    with pytest.raises(BadInput) as caught:
        encode_records(records)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert words in caught.value.message


def test_quarantine_names_are_utc_and_numbered() -> None:
    assert quarantine_name("sessions.json", EPOCH, 0) == f"sessions.json.corrupt-{STAMP}"
    assert quarantine_name("sessions.json", EPOCH, 2) == f"sessions.json.corrupt-{STAMP}-2"


# --- the store -----------------------------------------------------------------------------


async def test_round_trip(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    records = [session("a", created_at=EPOCH), session("b", udid="X-1", apps={})]
    await store.save(records)
    result = await SessionStore(tmp_path).load()
    assert result.records == records
    assert result.problem is None
    assert result.quarantined is None


async def test_later_mutation_does_not_change_a_taken_snapshot(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    record = session("a", viewers=1)
    await store.save([record])
    record["viewers"] = 99
    assert (await store.load()).records == [session("a", viewers=1)]


async def test_missing_file_and_missing_directory_load_as_empty(tmp_path: Path) -> None:
    for directory in (tmp_path, tmp_path / "not" / "there"):
        result = await SessionStore(directory).load()
        assert result.records == []
        assert result.problem is None
        assert result.quarantined is None
    assert not (tmp_path / "not").exists()


async def test_state_directory_is_created_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "deep" / "state"
    await SessionStore(state_dir).save([session("a")])
    assert (state_dir / "sessions.json").is_file()
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert temp_files(state_dir) == []


async def test_bad_records_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    await store.save([session("a")])
    with pytest.raises(BadInput, match=r"records\[1\].*duplicate"):
        await store.save([session("b"), session("b")])
    assert (await store.load()).records == [session("a")]
    assert store.statistics().save_requests == 1


async def store_holding_old(tmp_path: Path) -> SessionStore:
    """A store whose file holds one session, ``old``."""
    store = SessionStore(tmp_path)
    await store.save([session("old")])
    return store


def fail_with_eio(
    monkeypatch: pytest.MonkeyPatch, name: str, message: str = "Input/output error"
) -> None:
    """Make every call of ``os.<name>`` fail with EIO and ``message``."""

    def failing(*args: object) -> None:
        raise OSError(errno.EIO, message)

    monkeypatch.setattr(os, name, failing)


@pytest.mark.parametrize("filename", ["", ".", "..", "a/b"])
def test_filename_must_be_plain(tmp_path: Path, filename: str) -> None:
    with pytest.raises(BadInput, match="filename"):
        SessionStore(tmp_path, filename=filename)


async def test_failed_rename_keeps_previous_file_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await store_holding_old(tmp_path)

    fail_with_eio(monkeypatch, "replace")
    with pytest.raises(OSError, match="Input/output"):
        await store.save([session("new")])
    monkeypatch.undo()

    assert temp_files(tmp_path) == []
    assert (await store.load()).records == [session("old")]


async def test_crash_between_write_and_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = await store_holding_old(tmp_path)

    # A process killed after writing the temp file but before renaming it runs no
    # cleanup at all: make the rename fail and the removal do nothing.
    fail_with_eio(monkeypatch, "replace", "simulated crash")
    monkeypatch.setattr(os, "unlink", lambda path: None)
    with pytest.raises(OSError, match="simulated crash"):
        await store.save([session("new")])
    monkeypatch.undo()
    [leftover] = temp_files(tmp_path)
    assert leftover.startswith(".sessions.json.")

    caplog.set_level(logging.INFO, logger="bridge_actors.persist")
    result = await SessionStore(tmp_path).load()
    assert result.records == [session("old")]
    assert result.problem is None
    assert temp_files(tmp_path) == []
    assert any(leftover in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


async def test_crash_in_the_middle_of_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await store_holding_old(tmp_path)
    before = store.path.read_bytes()
    real_write = os.write
    partial_writes = []

    def half_then_disk_full(fd: int, data: bytes) -> int:
        partial_writes.append(real_write(fd, bytes(data[: len(data) // 2])))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_disk_full)
    with pytest.raises(OSError, match="No space left"):
        await store.save([session("new", padding="x" * 1000)])
    monkeypatch.undo()

    assert partial_writes and partial_writes[0] > 0
    assert temp_files(tmp_path) == []
    assert store.path.read_bytes() == before
    assert (await store.load()).records == [session("old")]
    statistics = store.statistics()
    assert statistics.save_failures == 1
    assert "No space left" in (statistics.last_error or "")


def valid_document() -> bytes:
    return render_document(encode_records([session("a"), session("b")]), saved_at=EPOCH)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (valid_document()[: len(valid_document()) // 2], "looks truncated"),
        (valid_document()[:-4], "looks truncated"),
        (b"\x00\xff\xfegarbage\x81", "not UTF-8"),
        (b"hello, world", "not valid JSON"),
        (b"", "is empty"),
        (b"[1, 2]", "not a JSON object at the top level (found array)"),
        (b'{"sessions": []}', 'no "version"'),
        (b'{"version": 2, "sessions": []}', "unknown version 2"),
        (b'{"version": true, "sessions": []}', "unknown version True"),
        (b'{"version": 1, "sessions": {}}', 'no "sessions" list (found object)'),
    ],
)
async def test_unusable_file_is_quarantined_and_reported(
    tmp_path: Path, raw: bytes, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sessions.json"
    path.write_bytes(raw)
    store = SessionStore(tmp_path, wall_clock=lambda: EPOCH)

    result = await store.load()

    assert result.records == []
    assert result.problem is not None
    assert words in result.problem
    assert result.quarantined == tmp_path / f"sessions.json.corrupt-{STAMP}"
    assert str(result.quarantined) in result.problem
    assert result.quarantined.read_bytes() == raw
    assert not path.exists()
    assert [r.levelno for r in caplog.records if r.name == "bridge_actors.persist"] == [
        logging.ERROR
    ]
    # Once aside, the bad file no longer stands in the way of a fresh start.
    assert (await store.load()).problem is None


async def test_quarantine_names_stay_unique_within_one_second(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, wall_clock=lambda: EPOCH)
    originals = [b"first garbage", b"second garbage", b"third garbage"]
    quarantined = []
    for raw in originals:
        (tmp_path / "sessions.json").write_bytes(raw)
        result = await store.load()
        assert result.quarantined is not None
        quarantined.append(result.quarantined)
    assert [p.name for p in quarantined] == [
        f"sessions.json.corrupt-{STAMP}",
        f"sessions.json.corrupt-{STAMP}-1",
        f"sessions.json.corrupt-{STAMP}-2",
    ]
    assert [p.read_bytes() for p in quarantined] == originals


async def test_bad_records_are_skipped_named_and_kept_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good, also_good = session("a"), session("b")
    sessions = [good, "not an object", {"device_type": "x"}, session("a", late=True), also_good]
    sessions.append({"session_id": 7})
    raw = json.dumps({"version": 1, "saved_at": EPOCH, "sessions": sessions}).encode()
    path = tmp_path / "sessions.json"
    path.write_bytes(raw)

    result = await SessionStore(tmp_path, wall_clock=lambda: EPOCH).load()

    assert result.records == [good, also_good]
    assert result.problem is not None
    for words in (
        "skipped 4 of 6",
        "#1: not a JSON object (found string)",
        "#2: missing required key 'session_id'",
        "#3: duplicate session_id 'a' (first at #0",
        "#5: session_id must be a non-empty string, not 7",
    ):
        assert words in result.problem
    assert "#0" not in result.problem.replace("first at #0", "")
    assert result.quarantined == tmp_path / f"sessions.json.corrupt-{STAMP}"
    assert result.quarantined.read_bytes() == raw
    assert path.read_bytes() == raw
    assert any(r.levelno == logging.ERROR for r in caplog.records)


async def test_required_keys_are_configurable(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, required_keys=("session_id", "udid"))
    with pytest.raises(BadInput, match="'udid'"):
        await store.save([session("a")])
    await store.save([session("a", udid="U")])
    path = tmp_path / "sessions.json"
    document = json.loads(path.read_bytes())
    document["sessions"].append(session("b"))
    path.write_text(json.dumps(document))
    result = await store.load()
    assert result.records == [session("a", udid="U")]
    assert result.problem is not None
    assert "#1: missing required key 'udid'" in result.problem


async def test_concurrent_saves_coalesce_and_the_newest_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SessionStore(tmp_path)
    gate = FsyncGate(monkeypatch)
    calls = 20
    call_order: list[int] = []

    async def saver(n: int) -> None:
        call_order.append(n)
        await store.save([session("s", n=n)])
        on_disk = json.loads(await trio.Path(store.path).read_bytes())["sessions"][0]["n"]
        assert call_order.index(on_disk) >= call_order.index(n)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(saver, 0)
            await gate.wait_entered()
            for n in range(1, calls):
                nursery.start_soon(saver, n)
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()

    assert len(call_order) == calls
    assert (await store.load()).records == [session("s", n=call_order[-1])]
    statistics = store.statistics()
    assert statistics.save_requests == calls
    assert statistics.saves == 2  # the first snapshot, then only the newest of the rest
    assert temp_files(tmp_path) == []


async def test_cancelled_save_leaves_no_temp_file_and_queued_saves_still_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await store_holding_old(tmp_path)
    gate = FsyncGate(monkeypatch)
    scope = trio.CancelScope()
    queued_done = trio.Event()

    async def cancelled_saver() -> None:
        with scope:
            await store.save([session("cancelled")])

    async def queued_saver() -> None:
        await store.save([session("queued")])
        queued_done.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancelled_saver)
            await gate.wait_entered()
            nursery.start_soon(queued_saver)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            gate.release.set()

    assert scope.cancelled_caught
    assert queued_done.is_set()
    assert temp_files(tmp_path) == []
    assert (await store.load()).records == [session("queued")]
    statistics = store.statistics()
    assert statistics.saves == 2
    assert statistics.save_failures == 0


async def test_cancelled_save_alone_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await store_holding_old(tmp_path)
    gate = FsyncGate(monkeypatch)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.save, [session("new")])
            await gate.wait_entered()
            nursery.cancel_scope.cancel()
            gate.release.set()
    assert temp_files(tmp_path) == []
    assert (await store.load()).records == [session("old")]


async def test_statistics_count_what_happened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SessionStore(tmp_path, wall_clock=lambda: EPOCH)
    assert store.statistics().path == str(tmp_path / "sessions.json")
    assert store.statistics().last_saved_at is None

    await store.save([session("a")])
    assert json.loads(store.path.read_bytes())["saved_at"] == EPOCH

    fail_with_eio(monkeypatch, "fsync")
    with pytest.raises(OSError):
        await store.save([session("b")])
    monkeypatch.undo()
    failed = store.statistics()
    assert (failed.saves, failed.save_failures) == (1, 1)
    assert failed.last_error == "OSError: [Errno 5] Input/output error"
    assert failed.last_saved_at == EPOCH

    await store.save([session("c")])
    await store.load()
    store.path.write_bytes(b"garbage")
    await store.load()
    await store.load()

    final = store.statistics()
    assert final.save_requests == 3
    assert final.saves == 2
    assert final.save_failures == 1
    assert final.last_error is None
    assert final.loads == 3
    assert final.quarantined_files == 1
