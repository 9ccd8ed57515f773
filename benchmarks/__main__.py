"""``python -m benchmarks SCENARIO ...``, from a source checkout.

Scenarios: fanout, churn, flood, slow, control, soak, ceiling, memory, http
(REST throughput and latency on keep-alive, ``Connection: close`` and proxied
connections, idle connections, and the server's descriptors after each),
rounds (rounds of video viewers that never read; the server's RSS after each),
auth (connect-to-first-frame and REST latency with auth none against token),
h264 (the H.264 stream beside the JPEG one: bytes, PSNR, encoder and server CPU,
join time), capacity (the largest viewer count of one device holding >= 95% of frames
at p99 <= 100 ms, for each of ``--formats``, side by side in one run), webrtc (aiortc
peers of one device: how many hold >= 95% of frames, server CPU per peer), record (N
viewers with and without a recording of their device: their frame share and p99, the
recorder's CPU per second of video), and ``standard`` (the set whose
results RESULTS.md holds). By default each scenario
starts its own server (``bridge-actors serve``, simulated backend, a free port
on 127.0.0.1, a temporary state directory); ``--url`` points the load at a
running server instead, and only at a loopback one unless ``--allow-remote``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import trio

from . import _auth, _h264, _record, _rest, _scenarios, _stress, _webrtc
from ._load import Context, budget, guard
from ._report import Reporter, Results
from ._server import TargetRefused, check_url, raise_descriptor_limit, raise_harness_priority

SCENARIOS = (
    "fanout", "churn", "flood", "slow", "control", "soak", "ceiling", "memory", "http", "rounds",
    "auth", "h264", "webrtc", "record", "capacity", "standard",
)  # fmt: skip
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"
STANDARD_FANOUT = [1, 10, 50, 100, 200]
WEBRTC_PEERS = [1, 5, 10, 20, 35, 50]


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: viewer counts must be positive integers")
    return counts


def _formats(text: str) -> list[str]:
    formats = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [f for f in formats if f not in ("json", "binary", "h264")]
    if not formats or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: formats are a comma-separated list of json, binary, h264"
        )
    return formats


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    return parse


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form NAME=VALUE")
    return name.strip().lower().replace("-", "_"), value.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Load the bridge with simulated clients and measure it.",
    )
    parser.add_argument("scenario", choices=SCENARIOS)
    common = parser.add_argument_group("target and output")
    common.add_argument("--url", help="a running server (http://host:port) instead of starting one")
    common.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --url that is not a loopback address (a host you own)",
    )
    common.add_argument(
        "--server-setting",
        action="append",
        type=_setting,
        metavar="NAME=VALUE",
        help="a setting for the server the harness starts (field name, e.g. fps=15)",
    )
    common.add_argument(
        "--format",
        choices=("json", "binary", "h264"),
        default="json",
        help="video stream: JSON, binary JPEG, or binary H.264 (fanout only)",
    )
    common.add_argument(
        "--client",
        choices=("lean", "trio-websocket"),
        default=None,
        help="viewer implementation (default: lean for viewer loads, trio-websocket for churn)",
    )
    common.add_argument("--client-procs", type=_positive(int), help="client worker processes")
    common.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_RESULTS,
        help=f"directory for results, logs and plots (default {DEFAULT_RESULTS})",
    )
    common.add_argument("--no-progress", action="store_true", help="plain lines, no live bars")
    common.add_argument("--no-plots", action="store_true")
    common.add_argument(
        "--quick",
        action="store_true",
        help="short settling pauses: checks that a scenario works, figures are rougher",
    )
    common.add_argument(
        "--timeout",
        type=_positive(float),
        help="hard limit per scenario, seconds (default: planned x2 + 60)",
    )
    load = parser.add_argument_group("scenario parameters")
    load.add_argument(
        "--viewers", type=_counts, help="fanout/ceiling: counts (default 1,10,50,100,200)"
    )
    load.add_argument(
        "--devices", type=_positive(int), default=1, help="fanout: devices to spread over"
    )
    load.add_argument("--duration", type=_positive(float), default=10.0, help="measured seconds")
    load.add_argument(
        "--formats",
        type=_formats,
        default=["binary", "h264"],
        help="capacity: formats to compare (default binary,h264)",
    )
    load.add_argument("--no-ceiling", action="store_true", help="fanout: skip the ceiling runs")
    load.add_argument("--cycles", type=_positive(int), default=10_000, help="churn cycles")
    load.add_argument("--concurrency", type=_positive(int), default=32, help="churn cycles at once")
    load.add_argument("--bursts", type=_positive(int), default=3, help="flood bursts")
    load.add_argument(
        "--attempts", type=_positive(int), default=150, help="flood attempts per burst"
    )
    load.add_argument("--sources", type=_positive(int), default=4, help="flood source addresses")
    load.add_argument("--stalled", type=_positive(int), default=5, help="slow: stalled viewers")
    load.add_argument("--normal", type=_positive(int), default=50, help="slow: normal viewers")
    load.add_argument(
        "--deadline", type=_positive(float), default=3.0, help="slow, rounds: eviction deadline"
    )
    load.add_argument("--stall-window", type=_positive(float), help="slow: seconds with stalls")
    load.add_argument("--taps", type=_positive(int), default=60, help="control: taps")
    load.add_argument("--minutes", type=_positive(float), default=2.0, help="soak: minutes")
    load.add_argument("--population", type=_positive(int), default=20, help="soak: viewers at once")
    load.add_argument("--memory-viewers", type=_positive(int), default=1000)
    load.add_argument("--viewer-fps", type=_positive(float), default=1.0, help="memory: ?fps=")
    load.add_argument(
        "--requests", type=_positive(int), default=4000, help="http: requests in each part"
    )
    load.add_argument(
        "--http-connections", type=_positive(int), default=16, help="http: clients at once"
    )
    load.add_argument("--idle", type=_positive(int), default=1000, help="http: idle connections")
    load.add_argument(
        "--keep-alive-timeout",
        type=_positive(float),
        default=5.0,
        help="http: the server's keep-alive timeout (set on a server the harness starts, "
        "assumed of a --url one)",
    )
    load.add_argument(
        "--request-timeout", type=_positive(float), default=2.0, help="http: seconds per request"
    )
    load.add_argument(
        "--h264-viewers", type=_counts, default=[10, 100], help="h264: viewer counts (10,100)"
    )
    load.add_argument(
        "--record-viewers", type=_positive(int), default=50, help="record: viewers (50)"
    )
    load.add_argument("--joins", type=_positive(int), default=40, help="h264: joins per policy")
    load.add_argument(
        "--clip-frames", type=_positive(int), default=90, help="h264: frames of each clip"
    )
    load.add_argument(
        "--peers", type=_counts, help="webrtc: peer counts, in order (default 1,5,10,20,35,50)"
    )
    load.add_argument("--rounds", type=_positive(int), default=5, help="rounds: rounds")
    load.add_argument(
        "--connects", type=_positive(int), default=200, help="auth: connects per mode"
    )
    load.add_argument(
        "--round-viewers", type=_positive(int), default=500, help="rounds: viewers per round"
    )
    return parser


def machine() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    return {
        "cores": os.cpu_count(),
        "ram_gb": round(memory.total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
    }


def _revision() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


Plan = list[tuple[str, float, Callable[[], Awaitable[None]]]]


def plan(ctx: Context, args: argparse.Namespace) -> Plan:
    """(name, hard time limit, run) for each scenario this invocation runs."""
    fmt = args.format
    viewer_client = args.client or "lean"
    churn_client = args.client or "trio-websocket"
    d = args.duration
    counts = args.viewers or STANDARD_FANOUT

    def fanout_limit(points: int) -> float:
        return budget(points * (d + 10) * (1 if args.no_ceiling else 2))

    runs: dict[str, tuple[float, Callable[[], Awaitable[None]]]] = {
        "fanout": (
            fanout_limit(len(counts)),
            partial(_scenarios.fanout, ctx, counts=counts, fmt=fmt, duration=d,
                    devices=args.devices, client=viewer_client,
                    with_ceiling=not args.no_ceiling),
        ),
        "ceiling": (
            budget(len(counts) * (d + 10)),
            partial(_scenarios.ceiling_only, ctx, counts=counts, fmt=fmt, duration=d,
                    client=viewer_client),
        ),
        "churn": (
            budget(args.cycles / 50 + 20),
            partial(_stress.churn, ctx, cycles=args.cycles, concurrency=args.concurrency,
                    fmt=fmt, client=churn_client),
        ),
        "flood": (
            budget(args.bursts * 2 + 20),
            partial(_stress.flood, ctx, bursts=args.bursts, attempts=args.attempts,
                    sources=args.sources, fmt=fmt, client=viewer_client),
        ),
        "slow": (
            budget(d + max(d, args.deadline + 10) + 30),
            partial(_stress.slow, ctx, stalled=args.stalled, normal=args.normal,
                    duration=d, deadline=args.deadline, stall_window=args.stall_window,
                    fmt=fmt, client=viewer_client),
        ),
        "control": (
            budget(args.taps * 0.3 + 20),
            partial(_scenarios.control, ctx, taps=args.taps, fmt=fmt),
        ),
        "soak": (
            budget(args.minutes * 60 + 20),
            partial(_scenarios.soak, ctx, minutes=args.minutes, population=args.population,
                    fmt=fmt, client=viewer_client),
        ),
        "memory": (
            budget(args.memory_viewers / 20 + 30),
            partial(_scenarios.memory, ctx, viewers=args.memory_viewers, fps=args.viewer_fps,
                    duration=min(d, 5.0), fmt=fmt, client=viewer_client),
        ),
        "http": (
            budget(4 * (_rest.PART_LIMIT + args.keep_alive_timeout + 12)
                   + args.idle / 100 + args.keep_alive_timeout + 30),
            partial(_rest.http, ctx, requests=args.requests, connections=args.http_connections,
                    idle=args.idle, keep_alive=args.keep_alive_timeout,
                    request_limit=args.request_timeout),
        ),
        "h264": (
            budget(args.clip_frames * 0.3 + len(args.h264_viewers) * 2 * (d + 5)
                   + 4 * (args.joins * 0.6 + 15)),
            partial(_h264.h264, ctx, counts=args.h264_viewers, duration=d, joins=args.joins,
                    clip_frames=args.clip_frames),
        ),
        "record": (
            budget(2 * (args.duration + 5) + 30),
            partial(_record.record, ctx, viewers=args.record_viewers, duration=d),
        ),
        "rounds": (
            budget((args.rounds + 1) * (args.round_viewers / 50 + args.deadline + 15 + 40)),
            partial(_stress.rounds, ctx, rounds=args.rounds, viewers=args.round_viewers,
                    deadline=args.deadline, fmt=fmt),
        ),
        "auth": (
            budget(args.connects * 0.2 + 30),
            partial(_auth.auth, ctx, connects=args.connects),
        ),
        "capacity": (
            budget(len(counts) * len(args.formats) * (d + 20)),
            partial(_scenarios.capacity, ctx, counts=counts, formats=args.formats, duration=d,
                    client=viewer_client),
        ),
        "webrtc": (
            budget(sum(60 + 2 * n + 2 + d for n in (args.peers or WEBRTC_PEERS)) + 30),
            partial(_webrtc.webrtc, ctx, peers=args.peers or WEBRTC_PEERS, duration=d),
        ),
    }  # fmt: skip
    if args.scenario != "standard":
        limit, run = runs[args.scenario]
        return [(args.scenario, args.timeout or limit, run)]
    standard_fanout = partial(
        _scenarios.fanout, ctx, counts=STANDARD_FANOUT,
        formats=[("json", STANDARD_FANOUT), ("binary", [200])], duration=10.0,
        client=viewer_client,
    )  # fmt: skip
    return [
        ("fanout", budget(6 * 20 * 2), standard_fanout),
        ("churn", *runs["churn"]),
        ("flood", *runs["flood"]),
        ("slow", *runs["slow"]),
        ("control", *runs["control"]),
        ("memory", *runs["memory"]),
        ("soak", *runs["soak"]),
    ]


async def run(args: argparse.Namespace, reporter: Reporter, results: Results, log_dir: Path) -> int:
    ctx = Context(args, reporter, results, log_dir)
    problems = 0
    for name, limit, scenario in plan(ctx, args):
        problem = await guard(limit, name, scenario)
        if problem is not None:
            problems += 1
            reporter.note(f"[bold red]{problem}[/]")
            await results.write({"kind": "problem", "scenario": name, "problem": problem})
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run one scenario (or the standard set); 0 when every scenario ran, 1 when one could not."""
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["scaleout"]:  # several processes of its own: its own runner
        from ._scaleout import main as scaleout

        return scaleout(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.scenario == "standard":
        args.duration, args.cycles, args.minutes = 10.0, 10_000, 2.0
    args.base_url = None
    if args.url:
        try:
            args.base_url = check_url(args.url, allow_remote=args.allow_remote)
        except TargetRefused as refusal:
            parser.error(str(refusal))
    started = datetime.datetime.now().astimezone()
    stem = f"{args.scenario}-{started:%Y%m%d-%H%M%S}"
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    results = Results(output / f"{stem}.jsonl")
    log_dir = output / f"{stem}-logs"
    command = "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv)
    meta = {
        "kind": "meta",
        "scenario": args.scenario,
        "started": started.isoformat(timespec="seconds"),
        "command": command,
        "machine": machine(),
        "revision": _revision(),
        "target": args.base_url or "a server started by the harness",
        "harness_niceness": raise_harness_priority(),
        "descriptor_limit": raise_descriptor_limit(),
    }
    with Reporter(progress=not args.no_progress) as reporter:
        reporter.note(
            f"[bold]{args.scenario}[/] on {meta['machine']['cores']} cores, "
            f"{meta['machine']['ram_gb']} GB, Python {meta['machine']['python']}"
            f" → {results.path}"
        )
        problems = trio.run(_run_with_meta, args, reporter, results, log_dir, meta)
    results.print_summary(reporter.console)
    markdown = output / f"{stem}.md"
    header = (
        f"# {args.scenario} — {started:%Y-%m-%d %H:%M %Z}\n\n"
        f"Machine: {meta['machine']['cores']} cores, {meta['machine']['ram_gb']} GB RAM, "
        f"Python {meta['machine']['python']}, {meta['machine']['platform']}; "
        f"revision {meta['revision']}.\n\nCommand: `{command}`\n\n"
    )
    markdown.write_text(header + results.markdown())
    if not args.no_plots and (results.loads or results.series):
        from ._plots import draw

        for path in draw(results, output / stem):
            reporter.console.print(f"plot: {path}")
    reporter.console.print(f"results: {results.path}\nsummary: {markdown}")
    return 1 if problems else 0


async def _run_with_meta(args, reporter, results, log_dir, meta) -> int:
    await results.write(meta)
    return await run(args, reporter, results, log_dir)


if __name__ == "__main__":
    sys.exit(main())
