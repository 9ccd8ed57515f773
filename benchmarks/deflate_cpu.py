"""Server CPU per delivered frame for viewers that offer ``permessage-deflate``, as browsers do.

A one-off measurement, not part of ``python -m benchmarks``: its viewers are wsproto
clients with the PerMessageDeflate extension (the benchmark's own readers offer no
extension), so a server that accepts the offer deflates every frame for every viewer
and they inflate it. The server runs as its own process on the simulated device; its
CPU time (user + system, psutil) over the window is reported per delivered frame.
Run it on two revisions to compare: the server is started from the current directory.

    python benchmarks/deflate_cpu.py --viewers 10 --seconds 8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import psutil
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request
from wsproto.extensions import PerMessageDeflate

# Run as a file from the tree whose server is measured; the harness comes from beside it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._server import start_server


async def viewer(port: int, path: str, counts: dict, deadline: float) -> None:
    """One deflate-offering viewer; counts whole frames and whether they came deflated."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    deflate = PerMessageDeflate()
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="127.0.0.1", target=path, extensions=[deflate])))
    with trio.move_on_at(deadline):
        while True:
            data = await stream.receive_some(1 << 20)
            if not data:
                break
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    counts["deflated"] += bool(event.extensions)
                elif isinstance(event, BytesMessage) and event.message_finished:
                    counts["frames"] += 1
    await stream.aclose()


async def measure(viewers: int, seconds: float) -> dict:
    log_path = Path(tempfile.mkdtemp(prefix="bench-deflate-")) / "server.log"
    limits = {"max_connections_per_session": viewers, "max_connections_per_minute": 10 * viewers}
    async with start_server(limits, log_path=log_path) as server:
        port = int(server.base_url.rsplit(":", 1)[1])
        path = f"/ws/{server.sessions[0]}/video?format=binary"
        counts = {"frames": 0, "deflated": 0}
        assert server.pid is not None
        process = psutil.Process(server.pid)
        async with trio.open_nursery() as nursery:
            warm = trio.current_time() + 2.0
            end = warm + seconds
            for _ in range(viewers):
                nursery.start_soon(viewer, port, path, counts, end)
            await trio.sleep_until(warm)
            frames_at_start, cpu = counts["frames"], process.cpu_times()
            await trio.sleep_until(end)
            spent = sum(process.cpu_times()[:2]) - sum(cpu[:2])
            frames = counts["frames"] - frames_at_start
    return {
        "viewers": viewers,
        "negotiated_deflate": counts["deflated"],
        "frames": frames,
        "server_cpu_s_per_s": round(spent / seconds, 3),
        "server_cpu_us_per_frame": round(spent / max(frames, 1) * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    print(trio.run(measure, args.viewers, args.seconds))


if __name__ == "__main__":
    main()
