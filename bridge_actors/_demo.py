"""``bridge-actors demo``: the library on its own, no server.

Opens a bridge on the simulated device, attaches N in-process viewers for a few
seconds, taps the screen once a second, and prints what each viewer received
against what the capture produced.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import trio

from ._errors import BridgeError
from ._open import open_bridge
from ._settings import Settings, load_settings


async def _viewer(bridge, sid: str, seqs: set[int]) -> None:
    async with bridge.watch(sid) as viewer:
        async for frame in viewer:
            seqs.add(frame.seq)


async def run_demo(settings: Settings, viewers: int, seconds: float) -> dict:
    seqs: list[set[int]] = [set() for _ in range(viewers)]
    async with open_bridge(settings) as bridge:
        config = await bridge.configurations()
        session = await bridge.create_session(config.device_types[0], config.ios_versions[-1])
        sid = session.session_id
        async with trio.open_nursery() as nursery:
            for i in range(viewers):
                nursery.start_soon(_viewer, bridge, sid, seqs[i])
            await trio.sleep(0.5)  # let every viewer attach before counting
            service = bridge.pool.get(session.device.udid)
            start_seq = service.statistics().frames_in if service else 0
            start_counts = [len(s) for s in seqs]
            for tap in range(int(seconds)):
                await bridge.control(sid, {"t": "tap", "x": 40 + 30 * tap, "y": 400})
                await trio.sleep(seconds / max(1, int(seconds)))
            end_seq = service.statistics().frames_in if service else 0
            end_counts = [len(s) for s in seqs]
            stats = bridge.statistics()
            nursery.cancel_scope.cancel()
    produced = end_seq - start_seq
    received = [end - start for start, end in zip(start_counts, end_counts, strict=True)]
    return {"produced": produced, "received": received, "seconds": seconds, "stats": stats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bridge-actors demo",
        description="Stream the simulated device to in-process viewers and print per-viewer fps.",
    )
    parser.add_argument("--viewers", type=int, default=5, help="in-process viewers (default 5)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to count (default 5)")
    parser.add_argument("--fps", type=int, default=30, help="capture rate (default 30)")
    args = parser.parse_args(argv)
    if not 1 <= args.viewers <= 2000:
        parser.error("--viewers must be between 1 and 2000")
    if not 1 <= args.seconds <= 3600:
        parser.error("--seconds must be between 1 and 3600")
    try:
        with tempfile.TemporaryDirectory(prefix="bridge-demo-") as state_dir:
            settings = load_settings(overrides={"state_dir": Path(state_dir), "fps": args.fps})
            result = trio.run(run_demo, settings, args.viewers, args.seconds)
    except BridgeError as exc:
        print(f"error: {exc}")
        return 1
    produced, seconds = result["produced"], result["seconds"]
    print(f"capture produced {produced} frames in {seconds:g}s ({produced / seconds:.1f} fps)")
    print(f"{'viewer':>6} {'frames':>7} {'fps':>6} {'of source':>9}")
    for i, got in enumerate(result["received"], 1):
        share = got / produced if produced else 0.0
        print(f"{i:>6} {got:>7} {got / seconds:>6.1f} {share:>9.1%}")
    received = result["received"]
    print(
        f"min {min(received)}  max {max(received)}  "
        f"reuse rate {result['stats'].pool.reuse_rate:.1%}  "
        f"dropped {result['stats'].captures[0].frames_dropped if result['stats'].captures else 0}"
    )
    return 0
