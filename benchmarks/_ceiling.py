"""The ceiling: the least a server must do to stream these frames, on this machine.

A trio-websocket broadcaster with nothing else in it: no sessions, limits,
actors or statistics. It sends the simulated device's real JPEGs (390x844, the
server's JPEG quality) in the server's own message format at the same frame
rate, each viewer getting the latest frame whenever it is ready for one, the
same drop rule the server follows. The server's delivered frames per second as
a fraction of this broadcaster's, with the same viewers in the same run, says
how much the bridge's machinery costs.

Run as ``python -m benchmarks._ceiling``; it prints ``listening on ws://...`` once
it accepts connections, and serves any path (``?format=binary`` for binary frames).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import trio
import trio_websocket

from bridge_actors import Frame, Settings, open_bridge
from bridge_actors.wire import binary_frame, video_frame_text

DEVICE_TYPE = "iPhone 15 (simulated)"
IOS_VERSION = "18.0"


async def _capture_frames(count: int, quality: int) -> list[Frame]:
    with tempfile.TemporaryDirectory(prefix="bridge-ceiling-") as state_dir:
        settings = Settings(
            state_dir=Path(state_dir), backends=("simulated",), jpeg_quality=quality
        )
        async with open_bridge(settings) as bridge:
            session = await bridge.create_session(DEVICE_TYPE, IOS_VERSION)
            frames: list[Frame] = []
            async with bridge.watch(session.session_id) as viewer:
                async for frame in viewer:
                    frames.append(frame)
                    if len(frames) >= count:
                        break
            await bridge.delete_session(session.session_id)
    return frames


def render_frames(count: int, quality: int = 80) -> list[Frame]:
    """``count`` consecutive frames of the simulated device, as the server captures them.

    Taken from a bridge run for the purpose (public API only), so they are the
    server's own JPEGs at its own quality and size.
    """
    return trio.run(_capture_frames, count, quality)


class _Latest:
    """The newest frame and an event that fires when the next one replaces it."""

    def __init__(self) -> None:
        self.frame: Frame | None = None
        self.changed = trio.Event()

    @property
    def seq(self) -> int:
        return self.frame.seq if self.frame is not None else 0

    def publish(self, seq: int, timestamp: float, source: Frame) -> None:
        """A new frame; its messages are made once, by the first viewer to send each format."""
        self.frame = Frame(
            seq=seq,
            timestamp=timestamp,
            captured_at=trio.current_time(),
            jpeg=source.jpeg,
            pixel_width=source.pixel_width,
            pixel_height=source.pixel_height,
            point_width=source.point_width,
            point_height=source.point_height,
            input_seq=0,
        )
        changed, self.changed = self.changed, trio.Event()
        changed.set()


async def _produce(latest: _Latest, frames: list[Frame], fps: int) -> None:
    interval = 1 / fps
    deadline = trio.current_time()
    seq = 0
    while True:
        await trio.sleep_until(deadline)
        deadline = max(deadline, trio.current_time())
        seq += 1
        latest.publish(seq, time.time(), frames[seq % len(frames)])
        deadline += interval


def _handler(latest: _Latest):
    async def handle(request: trio_websocket.WebSocketRequest) -> None:
        binary = "format=binary" in request.path
        ws = await request.accept()
        sent = 0
        last_seq = latest.seq
        second, in_second, previous = int(trio.current_time()), 0, 0
        try:
            while True:
                while latest.seq == last_seq:
                    await latest.changed.wait()
                last_seq = latest.seq
                sent += 1
                now = int(trio.current_time())
                if now != second:
                    previous = in_second if now == second + 1 else 0
                    second, in_second = now, 0
                in_second += 1
                frame = latest.frame
                assert frame is not None
                if binary:
                    await ws.send_message(binary_frame(frame))
                else:
                    await ws.send_message(video_frame_text(frame, sent, previous))
                del frame
        except trio_websocket.ConnectionClosed:
            return

    return handle


async def serve(port: int, fps: int, frames: list[Frame]) -> None:
    latest = _Latest()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_produce, latest, frames, fps)
        server = await nursery.start(
            trio_websocket.serve_websocket, _handler(latest), "127.0.0.1", port, None
        )
        print(f"listening on ws://127.0.0.1:{server.port}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._ceiling")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--quality", type=int, default=80)
    parser.add_argument("--frames", type=int, default=30, help="distinct frames to cycle through")
    args = parser.parse_args(argv)
    frames = render_frames(args.frames, args.quality)
    mean_bytes = sum(len(frame.jpeg) for frame in frames) // len(frames)
    print(f"frames {len(frames)} mean_bytes {mean_bytes}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, args.port, args.fps, frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
