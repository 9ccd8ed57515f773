"""Server CPU per second for N H.264 viewers of one ios device: passthrough vs encoder.

A one-off measurement, not part of ``python -m benchmarks``: the ios backend needs
the fake ``idb`` of the test suite (tests/fakes.py), which here serves a libx264
clip for ``video-stream --format h264`` and the same pictures as JPEG for
``--format mjpeg``, both endless at the frame rate. The server runs as its own
process (``python -m bridge_actors serve --backend ios``); its CPU time (user +
system, psutil) over the window is what is reported, the fake idb processes and
the viewers (this process) excluded.

    python -m benchmarks.passthrough_cpu --viewers 1 10 50 --seconds 10
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import sys
import tempfile
from pathlib import Path

import av
import httpx
import psutil
import trio
import trio_websocket
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fakes import FakeTools, h264_clip


def jpegs_of(clip: tuple[bytes, ...]) -> list[bytes]:
    """The clip's pictures as JPEG: the same screen for the JPEG capture."""
    decoder = av.CodecContext.create("h264", "r")
    pictures = [p for unit in clip for p in decoder.decode(av.Packet(unit))]
    pictures += decoder.decode(None)
    out = []
    for picture in pictures:
        buffer = io.BytesIO()
        Image.fromarray(picture.to_ndarray(format="rgb24")).save(buffer, "JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def measure(tools: FakeTools, mode: str, viewers: int, seconds: float, fps: int) -> dict:
    port = free_port()
    state = tempfile.mkdtemp(prefix="bench-state-")
    env = {
        **os.environ,
        "PATH": f"{tools.dir}{os.pathsep}{os.environ['PATH']}",
        "BRIDGE_H264_PASSTHROUGH": mode,
    }
    argv = [sys.executable, "-m", "bridge_actors", "serve", "--backend", "ios", "--port"]
    argv += [str(port), "--host", "127.0.0.1", "--fps", str(fps), "--state-dir", state]
    argv += ["--no-initial-session", "--log-level", "WARNING"]
    argv += ["--max-connections-per-session", "1000", "--max-connections-per-minute", "100000"]
    server = await trio.lowlevel.open_process(argv, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            with trio.fail_after(30):
                while True:
                    try:
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.1)
            created = await http.post(
                "/api/sessions/create", data={"device_type": "iPhone 15", "ios_version": "17.2"}
            )
            sid = created.json()["session_id"]
            received = [0] * viewers
            measuring = trio.Event()
            async with trio.open_nursery() as nursery:

                async def viewer(index: int) -> None:
                    url = f"ws://127.0.0.1:{port}/ws/{sid}/video?format=binary&codec=h264"
                    async with trio_websocket.open_websocket_url(url) as ws:
                        while True:
                            await ws.get_message()
                            if measuring.is_set():
                                received[index] += 1

                for index in range(viewers):
                    nursery.start_soon(viewer, index)
                await trio.sleep(3)  # everyone connected, the source running
                process = psutil.Process(server.pid)
                before = process.cpu_times()
                started = trio.current_time()
                measuring.set()
                await trio.sleep(seconds)
                after = process.cpu_times()
                elapsed = trio.current_time() - started
                stats = (await http.get("/stats")).json()["h264"]
                nursery.cancel_scope.cancel()
        [encoder] = stats.values()
        cpu = (after.user - before.user) + (after.system - before.system)
        return {
            "mode": mode,
            "viewers": viewers,
            "h264_source": encoder["h264_source"],
            "cpu_per_s": cpu / elapsed,
            "frames_per_viewer_per_s": sum(received) / viewers / elapsed,
            "frames_encoded": encoder["frames_encoded"],
            "frames_passed_through": encoder["frames_passed_through"],
        }
    finally:
        server.terminate()
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await server.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--size", default="390x844", help="WIDTHxHEIGHT of the clip")
    args = parser.parse_args()
    if max(args.viewers) > 200 or args.seconds > 120:
        parser.error("at most 200 viewers and 120 seconds")
    width, height = map(int, args.size.split("x"))
    clip = h264_clip(width, height, frames=60, gop=30)
    root = Path(tempfile.mkdtemp(prefix="bench-passthrough-"))
    tools = FakeTools(root / "tools")
    for number, jpeg in enumerate(jpegs_of(clip)):
        (tools.dir / f"frame{number}.jpg").write_bytes(jpeg)
    tools.add_h264_stream(clip)
    tools.behave(stream="loop", frames=len(clip))
    tools.add_simulator("22222222-2222-2222-2222-222222222222", "user's own", "Shutdown")
    print(f"clip {width}x{height}, {len(clip)} frames, GOP 30, {args.fps} fps, {args.seconds:g} s")
    print(f"{'mode':<8}{'viewers':>8}  {'source':<12}{'CPU s/s':>8}{'fps/viewer':>11}")
    for viewers in args.viewers:
        for mode in ("auto", "never"):
            row = await measure(tools, mode, viewers, args.seconds, args.fps)
            print(
                f"{row['mode']:<8}{row['viewers']:>8}  {row['h264_source']:<12}"
                f"{row['cpu_per_s']:>8.3f}{row['frames_per_viewer_per_s']:>11.1f}",
                flush=True,
            )


if __name__ == "__main__":
    trio.run(main)
