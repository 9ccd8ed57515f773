"""A client worker process: many simulated clients in one Trio loop, steered over stdin/stdout.

The harness starts one or two of these (``python -m benchmarks._clients``) so
that the clients' CPU is spent outside the harness process, which must stay
idle enough to measure ``/health`` latency honestly. The first line on stdin is
the job (a JSON object with a ``mode``); later lines are commands (``measure``,
``stop``). Every line on stdout is a JSON event: progress while working, one
``result`` at the end.

Modes: ``viewers`` (hold viewers open, measure a window), ``churn`` (connect,
first frame, disconnect, over and over), ``flood`` (bursts of connection
attempts, each timed until the server closes it), ``control`` (taps and their
tap-to-frame latency), ``soak`` (viewers joining and leaving), ``http``
(REST requests on keep-alive or ``Connection: close`` connections) and ``idle``
(connections that send nothing, or one request, and then just stay).
"""

from __future__ import annotations

import json
import random
import struct
import sys
import time
from collections import Counter
from typing import Any

import trio
import trio_websocket

from ._lean import run_lean_viewer
from ._rawhttp import (
    RawHttpConnection,
    RequestTally,
    close_mode_client,
    keep_alive_client,
    request_bytes,
)
from ._stats import Histogram
from ._viewer import RECEIVE_BUFFER, Verifier, ViewerRecord, Window, run_viewer
from ._wire import binary_frame_facts, json_frame_facts, raw_connect, split_ws_url


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


CLIENTS = {"lean": run_lean_viewer, "trio-websocket": run_viewer}


def _viewer_runner(job: dict[str, Any]):
    name = job.get("client", "lean")
    if name not in CLIENTS:
        raise ValueError(f"unknown client {name!r}; known: {', '.join(CLIENTS)}")
    return CLIENTS[name]


def _cpu_seconds() -> float:
    return time.process_time()


async def _read_lines(stream: trio.abc.ReceiveStream, send: trio.MemorySendChannel) -> None:
    buffer = b""
    async with send:
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    await send.send(json.loads(line))


async def _progress(interval: float, report) -> None:
    while True:
        await trio.sleep(interval)
        emit("progress", cpu_s=_cpu_seconds(), **report())


# --- viewers ----------------------------------------------------------------------------------


async def viewers(job: dict[str, Any], commands: trio.MemoryReceiveChannel) -> None:
    """Connect every viewer (a few at a time), report ready, measure when told, stop when told."""
    binary = job.get("format") in ("binary", "h264")
    run = _viewer_runner(job)
    specs = job["viewers"]  # [{"url":..., "device":...}]
    window = Window()
    verifier = Verifier(every=job.get("verify_every", 500))
    records = [ViewerRecord(i, spec.get("device", 0)) for i, spec in enumerate(specs)]
    gate = trio.Semaphore(job.get("connect_concurrency", 16))
    deadline = job.get("deadline", 600)
    cpu_at_measure: list[float] = []

    async def one(spec: dict[str, Any], record: ViewerRecord) -> None:
        connected = trio.Event()

        async def release_gate_when_connected() -> None:
            await connected.wait()
            gate.release()

        await gate.acquire()
        async with trio.open_nursery() as inner:
            inner.start_soon(release_gate_when_connected)
            await run(spec["url"], record, window, verifier, binary=binary, connected=connected)

    def counts() -> dict[str, Any]:
        return {
            "connected": sum(r.connected_at is not None for r in records),
            "streaming": sum(r.first_frame_at is not None and r.closed_at is None for r in records),
            "closed": sum(r.closed_at is not None or r.error is not None for r in records),
            "frames": sum(r.frames_total for r in records),
            "window_frames": sum(r.frames for r in records),
            "window_bytes": sum(r.bytes for r in records),
        }

    with trio.move_on_after(deadline):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_progress, job.get("progress_interval", 0.5), counts)
            for spec, record in zip(specs, records, strict=True):
                nursery.start_soon(one, spec, record)

            async def announce_ready() -> None:
                while True:
                    c = counts()
                    if c["connected"] + sum(r.error is not None for r in records) >= len(records):
                        # Ready once each viewer has a frame (or was refused or failed).
                        settled = all(
                            r.first_frame_at is not None or r.closed_at is not None or r.error
                            for r in records
                        )
                        if settled:
                            emit("ready", **c)
                            return
                    await trio.sleep(0.05)

            nursery.start_soon(announce_ready)
            async for command in commands:
                if command["cmd"] == "measure":
                    window.t0, window.t1 = command["t0"], command["t1"]
                    cpu_at_measure.append(_cpu_seconds())
                elif command["cmd"] == "stop":
                    break
            nursery.cancel_scope.cancel()
    cpu_end = _cpu_seconds()
    refusals = Counter(str(r.close_code) for r in records if r.refused)
    emit(
        "result",
        viewers=[r.to_json() for r in records],
        refusals=dict(refusals),
        errors=dict(Counter(r.error for r in records if r.error)),
        verify={"checked": verifier.checked, "failures": verifier.failures},
        cpu_s=cpu_end,
        cpu_window_s=cpu_end - cpu_at_measure[0] if cpu_at_measure else None,
    )


# --- churn ------------------------------------------------------------------------------------


async def churn(job: dict[str, Any], commands: trio.MemoryReceiveChannel) -> None:
    """``cycles`` times: connect, wait for the first frame, disconnect; ``concurrency`` at once."""
    url, cycles, binary = job["url"], job["cycles"], job.get("format") == "binary"
    run = _viewer_runner(job)
    started = Counter()
    done = Counter()
    cycle_ms = Histogram()
    first_frame_ms = Histogram()
    lock = trio.Lock()
    window = Window()
    verifier = Verifier(every=job.get("verify_every", 1000))

    async def cycle(i: int) -> None:
        record = ViewerRecord(i)
        begin = time.time()
        await run(url, record, window, verifier, binary=binary, stop_after_first_frame=True)
        if record.first_frame_at is not None:
            done["ok"] += 1
            first_frame_ms.add((record.first_frame_at - begin) * 1000)
            cycle_ms.add((time.time() - begin) * 1000)
        elif record.close_code is not None:
            done[f"closed_{record.close_code}"] += 1
        else:
            done[f"error: {record.error}"] += 1

    async def lane() -> None:
        while True:
            async with lock:
                if started["n"] >= cycles:
                    return
                started["n"] += 1
                i = started["n"]
            await cycle(i)

    def counts() -> dict[str, Any]:
        return {"done": sum(done.values()), "ok": done["ok"]}

    with trio.move_on_after(job.get("deadline", 600)) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_progress, job.get("progress_interval", 0.5), counts)
            async with trio.open_nursery() as lanes:
                for _ in range(job.get("concurrency", 16)):
                    lanes.start_soon(lane)
            nursery.cancel_scope.cancel()
    emit(
        "result",
        cycles=cycles,
        completed=sum(done.values()),
        outcomes=dict(done),
        timed_out=scope.cancelled_caught,
        cycle_ms=cycle_ms.summary(),
        first_frame_ms=first_frame_ms.summary(),
        verify={"checked": verifier.checked, "failures": verifier.failures},
        cpu_s=_cpu_seconds(),
    )


# --- flood ------------------------------------------------------------------------------------


async def flood(job: dict[str, Any], commands: trio.MemoryReceiveChannel) -> None:
    """Bursts of attempts; each one timed from its accepted handshake to the server's answer:
    a close frame (refused, with its code) or a first frame (admitted, then dropped at once)."""
    targets = [split_ws_url(url) for url in job["urls"]]
    sources: list[str | None] = job.get("sources") or [None]
    hold = job.get("hold_timeout", 2.0)
    attempts: list[dict[str, Any]] = []

    async def attempt(burst: int, i: int) -> None:
        target = targets[i % len(targets)]
        source = sources[(i // len(targets)) % len(sources)]
        outcome: dict[str, Any] = {"burst": burst, "target": i % len(targets), "source": source}
        begin = time.perf_counter()
        try:
            sock = await raw_connect(target, source_address=source)
        except (OSError, trio.TooSlowError) as exc:
            outcome.update(outcome="connect_failed", error=str(exc) or type(exc).__name__)
            attempts.append(outcome)
            return
        accepted = time.perf_counter()
        outcome["handshake_ms"] = (accepted - begin) * 1000
        try:
            with trio.move_on_after(hold) as waited:
                try:
                    opcode, payload = await sock.read_frame()
                except (EOFError, OSError):
                    opcode, payload = None, b""
            answered = time.perf_counter()
            if waited.cancelled_caught:
                outcome["outcome"] = "silent"
            elif opcode == 0x8:
                outcome.update(
                    outcome="refused",
                    code=struct.unpack_from(">H", payload)[0] if len(payload) >= 2 else 1005,
                    reason=payload[2:].decode("utf-8", "replace"),
                    close_ms=(answered - accepted) * 1000,
                )
            elif opcode is None:
                outcome.update(outcome="dropped", close_ms=(answered - accepted) * 1000)
            else:
                outcome.update(outcome="admitted", first_frame_ms=(answered - accepted) * 1000)
        finally:
            sock.close()
        attempts.append(outcome)

    def counts() -> dict[str, Any]:
        return {"done": len(attempts)}

    # Ready before the bursts, so starting this process is never part of the flood's time.
    emit("ready", ready_at=time.time())
    with trio.move_on_after(job.get("go_limit", 120)):
        async for command in commands:
            if command.get("cmd") == "go":
                break
    with trio.move_on_after(job.get("deadline", 300)):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_progress, job.get("progress_interval", 0.5), counts)
            origin = trio.current_time()
            async with trio.open_nursery() as bursts:
                for b, burst in enumerate(job["bursts"]):
                    await trio.sleep_until(origin + burst["at"])
                    for i in range(burst["attempts"]):
                        bursts.start_soon(attempt, b, i)
            nursery.cancel_scope.cancel()
    emit("result", attempts=attempts, cpu_s=_cpu_seconds())


# --- control ----------------------------------------------------------------------------------


async def control(job: dict[str, Any], commands: trio.MemoryReceiveChannel) -> None:
    """Taps on the control socket; for each, the first frame whose input_seq covers it."""
    binary = job.get("format") == "binary"
    facts_of = binary_frame_facts if binary else json_frame_facts
    frames: list[tuple[float, int]] = []  # (received at, input_seq)
    taps: list[dict[str, Any]] = []
    problems: list[str] = []
    first_frame = trio.Event()

    async def watch(ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            message = await ws.get_message()
            frames.append((time.perf_counter(), facts_of(message).input_seq))
            first_frame.set()

    async def tap_loop(ws: trio_websocket.WebSocketConnection) -> None:
        await first_frame.wait()
        for i in range(job["taps"]):
            x, y = random.randrange(20, 370), random.randrange(400, 700)
            sent = time.perf_counter()
            await ws.send_message(json.dumps({"t": "tap", "x": x, "y": y, "id": i}))
            with trio.move_on_after(5):
                while True:
                    reply = json.loads(await ws.get_message())
                    if reply.get("type") == "ack" and reply.get("id") == i:
                        taps.append(
                            {
                                "id": i,
                                "sent": sent,
                                "acked_ms": (time.perf_counter() - sent) * 1000,
                                "input_seq": reply["input_seq"],
                            }
                        )
                        break
                    if reply.get("type") == "error":
                        problems.append(f"tap {i}: {reply.get('message')}")
                        break
            await trio.sleep(job.get("interval", 0.15))

    with trio.move_on_after(job.get("deadline", 120)):
        try:
            async with (
                trio_websocket.open_websocket_url(
                    job["video_url"], receive_buffer_size=RECEIVE_BUFFER, disconnect_timeout=1
                ) as video,
                trio_websocket.open_websocket_url(job["control_url"], disconnect_timeout=1) as ctl,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(watch, video)
                await tap_loop(ctl)
                await trio.sleep(0.5)  # the last tap's frame
                nursery.cancel_scope.cancel()
        except (trio_websocket.ConnectionClosed, trio_websocket.HandshakeError, OSError) as exc:
            problems.append(f"{type(exc).__name__}: {exc}")
    for tap in taps:
        covering = next(
            (at for at, seq in frames if at >= tap["sent"] and seq >= tap["input_seq"]), None
        )
        tap["frame_ms"] = None if covering is None else (covering - tap["sent"]) * 1000
    emit(
        "result",
        taps=taps,
        frames=len(frames),
        problems=problems[:20],
        cpu_s=_cpu_seconds(),
    )


# --- soak -------------------------------------------------------------------------------------


async def soak(job: dict[str, Any], commands: trio.MemoryReceiveChannel) -> None:
    """``population`` viewer slots; each connects, watches a random while, leaves, repeats."""
    binary = job.get("format") == "binary"
    run = _viewer_runner(job)
    low, high = job.get("lifetime", (2.0, 10.0))
    window = Window(0, float("inf"))
    verifier = Verifier(every=job.get("verify_every", 2000))
    tally = Counter()
    latency = Histogram()
    rng = random.Random(job.get("seed", 1))

    def count(record: ViewerRecord) -> None:
        tally["sessions"] += 1
        tally["frames"] += record.frames
        latency.merge(record.latency)
        if record.refused:
            tally[f"refused_{record.close_code}"] += 1
        elif record.error:
            tally["errors"] += 1
        elif record.close_code is not None:
            tally[f"closed_{record.close_code}"] += 1

    async def slot(n: int) -> None:
        i = 0
        while True:
            i += 1
            record = ViewerRecord(n * 1_000_000 + i)
            try:
                with trio.move_on_after(rng.uniform(low, high)):
                    await run(job["url"], record, window, verifier, binary=binary)
            finally:
                count(record)  # also the viewers still watching when the soak ends
            if record.refused or record.error:
                await trio.sleep(1)

    def counts() -> dict[str, Any]:
        return dict(tally)

    with trio.move_on_after(job["duration"]):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_progress, job.get("progress_interval", 1.0), counts)
            for n in range(job["population"]):
                nursery.start_soon(slot, n)
                await trio.sleep(0.02)
    emit(
        "result",
        tally=dict(tally),
        latency_ms=latency.summary(),
        verify={"checked": verifier.checked, "failures": verifier.failures},
        cpu_s=_cpu_seconds(),
    )


# --- http -------------------------------------------------------------------------------------


async def _wait_for_stop(commands: trio.MemoryReceiveChannel, limit: float) -> None:
    with trio.move_on_after(limit):
        async for command in commands:
            if command.get("cmd") == "stop":
                return


async def http(job: dict[str, Any], commands: trio.MemoryReceiveChannel) -> None:
    """``requests`` GETs over ``connections`` clients, keep-alive or ``Connection: close``.

    Emits ``done`` after the last response, then holds the keep-alive connections open
    (clients that never close) until told to stop."""
    host, port, path = job["host"], job["port"], job["path"]
    remaining = [job["requests"]]
    tally = RequestTally()
    held: list[RawHttpConnection] = []
    request_limit = job.get("request_limit", 2.0)

    def counts() -> dict[str, Any]:
        return {"done": tally.done, "ok": tally.outcomes.get("ok", 0)}

    with trio.move_on_after(job.get("deadline", 120)) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_progress, job.get("progress_interval", 0.5), counts)
            async with trio.open_nursery() as clients:
                for _ in range(job.get("connections", 16)):
                    if job.get("close"):
                        clients.start_soon(
                            close_mode_client, host, port, path, remaining, tally, request_limit
                        )
                    else:
                        clients.start_soon(
                            keep_alive_client,
                            host,
                            port,
                            path,
                            remaining,
                            tally,
                            request_limit,
                            held,
                        )
            nursery.cancel_scope.cancel()
    emit("done", requests=job["requests"], timed_out=scope.cancelled_caught,
         held_open=len(held), **tally.to_json())  # fmt: skip
    await _wait_for_stop(commands, job.get("hold_limit", 60))
    for conn in held:
        await conn.aclose()
    emit("result", held_open=len(held), cpu_s=_cpu_seconds())


async def _closed_by_peer(stream: trio.SocketStream) -> bool:
    """Whether the server has closed this connection we never closed (EOF or reset)."""
    try:
        with trio.move_on_after(0.2):
            while True:
                if not await stream.receive_some(65536):
                    return True
    except (OSError, trio.BrokenResourceError):
        return True
    return False


async def idle(job: dict[str, Any], commands: trio.MemoryReceiveChannel) -> None:
    """``silent`` connections that send nothing and ``after_request`` that send one
    keep-alive request, read its answer, and then stay; none of them ever closes until
    told to stop."""
    host, port = job["host"], job["port"]
    streams: list[trio.SocketStream] = []
    tally = Counter()
    request = request_bytes(host, port, job.get("path", "/health"), close=False)

    async def one(send_request: bool) -> None:
        try:
            with trio.fail_after(10):
                conn = await RawHttpConnection.open(host, port)
                streams.append(conn.stream)
                if send_request:
                    await conn.stream.send_all(request)
                    reply = await conn.read_by_length()
                    tally["answered" if reply.status == 200 else f"http_{reply.status}"] += 1
                tally["opened"] += 1
        except (OSError, EOFError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            tally[f"failed: {type(exc).__name__}"] += 1

    async def lane(kinds: list[bool]) -> None:
        while kinds:
            await one(kinds.pop())

    kinds = [False] * job.get("silent", 0) + [True] * job.get("after_request", 0)
    random.Random(0).shuffle(kinds)
    with trio.move_on_after(job.get("deadline", 60)):
        async with trio.open_nursery() as nursery:
            for _ in range(job.get("concurrency", 32)):
                nursery.start_soon(lane, kinds)
    emit("ready", ready_at=time.time(), **tally)
    await _wait_for_stop(commands, job.get("hold_limit", 120))
    closed = [False] * len(streams)

    async def check(i: int, stream: trio.SocketStream) -> None:
        closed[i] = await _closed_by_peer(stream)

    async with trio.open_nursery() as nursery:
        for i, stream in enumerate(streams):
            nursery.start_soon(check, i, stream)
    for stream in streams:
        await stream.aclose()
    emit("result", opened=len(streams), closed_by_server=sum(closed), tally=dict(tally),
         cpu_s=_cpu_seconds())  # fmt: skip


MODES = {"viewers": viewers, "churn": churn, "flood": flood, "control": control, "soak": soak,
         "http": http, "idle": idle}  # fmt: skip


async def _main() -> None:
    stdin = trio.lowlevel.FdStream(0)
    send, receive = trio.open_memory_channel(16)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read_lines, stdin, send)
        job = await receive.receive()
        mode = MODES.get(job.get("mode"))
        if mode is None:
            emit("error", message=f"unknown mode {job.get('mode')!r}; known: {', '.join(MODES)}")
        else:
            await mode(job, receive)
        nursery.cancel_scope.cancel()


def main() -> int:
    trio.run(_main)
    return 0


if __name__ == "__main__":
    sys.exit(main())
