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
import base64
import contextlib
import struct
import sys
import time

import trio
import trio_websocket

from bridge_actors._backends.simulated import DEVICE_SIZES, SimulatedDevice, _FrameMaker
from bridge_actors._device import BINARY_MAGIC, CODEC_JPEG, DeviceInfo

DEVICE_TYPE = "iPhone 15 (simulated)"
_HEADER = struct.Struct(">4sIdHHHHIB3x")


def render_frames(count: int, quality: int = 80) -> list[bytes]:
    """``count`` consecutive frames of the simulated device, encoded as the server would."""
    width, height = DEVICE_SIZES[DEVICE_TYPE]
    info = DeviceInfo(
        udid="CEILING",
        name=f"bridge-{DEVICE_TYPE}-ceiling",
        device_type=DEVICE_TYPE,
        ios_version="18.0",
        point_width=width,
        point_height=height,
        pixel_width=width,
        pixel_height=height,
        backend="simulated",
    )
    device = SimulatedDevice(info)
    maker = _FrameMaker(info, quality)
    start = time.time()
    return [maker.make(device.scene(i / 30, start + i / 30))[0] for i in range(count)]


class _Latest:
    """The newest frame and an event that fires when the next one replaces it."""

    def __init__(self) -> None:
        self.seq = 0
        self.timestamp = 0.0
        self.b64 = ""
        self.binary = b""
        self.changed = trio.Event()

    def publish(self, seq: int, timestamp: float, jpeg: bytes) -> None:
        """Serialise once for everyone, in both formats (base64 of 60 KB costs ~0.1 ms)."""
        self.seq, self.timestamp = seq, timestamp
        width, height = DEVICE_SIZES[DEVICE_TYPE]
        header = _HEADER.pack(
            BINARY_MAGIC, seq, timestamp, width, height, width, height, 0, CODEC_JPEG
        )
        self.binary = header + jpeg
        self.b64 = base64.b64encode(jpeg).decode("ascii")
        changed, self.changed = self.changed, trio.Event()
        changed.set()


async def _produce(latest: _Latest, frames: list[bytes], fps: int) -> None:
    interval = 1 / fps
    deadline = trio.current_time()
    seq = 0
    while True:
        await trio.sleep_until(deadline)
        deadline = max(deadline, trio.current_time())
        seq += 1
        latest.publish(seq, time.time(), frames[seq % len(frames)])
        deadline += interval


def _json_message(latest: _Latest, counter: int, fps: int) -> str:
    width, height = DEVICE_SIZES[DEVICE_TYPE]
    return (
        '{"type":"video_frame","data":"'
        + latest.b64
        + f'","pixel_width":{width},"pixel_height":{height},"point_width":{width},'
        f'"point_height":{height},"frame":{counter},"timestamp":{latest.timestamp!r},'
        f'"fps":{fps},"format":"jpeg","seq":{latest.seq},"input_seq":0}}'
    )


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
                if binary:
                    await ws.send_message(latest.binary)
                else:
                    await ws.send_message(_json_message(latest, sent, previous))
        except trio_websocket.ConnectionClosed:
            return

    return handle


async def serve(port: int, fps: int, frames: list[bytes]) -> None:
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
    print(f"frames {len(frames)} mean_bytes {sum(map(len, frames)) // len(frames)}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, args.port, args.fps, frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
