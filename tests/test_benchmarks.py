"""The benchmark harness: its arithmetic, and every scenario run for real at tiny scale.

The scenarios run as the command line runs them (``python -m benchmarks ...``),
each starting its own server on 127.0.0.1, all at once so the whole module stays
within seconds; the figures are checked for presence and sense, never for speed.
"""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from benchmarks import __main__ as bench
from benchmarks._figures import summarize_viewers
from benchmarks._report import Reporter, Results
from benchmarks._scenarios import holds_the_stream
from benchmarks._server import TargetRefused, check_url
from benchmarks._stall import StallTrace, TcpEntry, parse_proc_net_tcp
from benchmarks._stats import Histogram, quantile, source_span
from benchmarks._wire import binary_frame_facts, json_frame_facts, verify_json_frame

ROOT = Path(__file__).resolve().parent.parent

# --- pure parts -------------------------------------------------------------------------------


def test_histogram_quantiles_are_nearest_rank_at_a_tenth_of_a_millisecond():
    hist = Histogram()
    hist.extend([1.0, 2.0, 3.0, 4.0, 100.04])
    assert hist.quantile(0.5) == 3.0
    assert hist.quantile(0.99) == 100.0
    assert hist.quantile(0.0) == 1.0
    merged = Histogram.from_json(json.loads(json.dumps(hist.to_json())))
    merged.merge(Histogram({10: 5}))  # five samples of 1.0 ms
    assert len(merged) == 10
    assert merged.quantile(0.5) == 1.0
    assert Histogram().quantile(0.5) is None
    with pytest.raises(ValueError, match="quantile"):
        hist.quantile(1.5)


def test_plain_quantile_and_source_span():
    assert quantile([5, 1, 3], 0.5) == 3
    assert quantile([], 0.5) is None
    span = source_span([(10, 20), None, (12, 25)])
    assert (span.first, span.last, span.frames) == (10, 25, 16)
    assert source_span([None]) is None


def _json_frame(seq: int, timestamp: float, input_seq: int) -> str:
    data = base64.b64encode(b"\xff\xd8" + bytes(3000) + b"\xff\xd9").decode()
    return (
        f'{{"type":"video_frame","data":"{data}","pixel_width":390,"pixel_height":844,'
        f'"point_width":390,"point_height":844,"frame":7,"timestamp":{timestamp!r},"fps":30,'
        f'"format":"jpeg","seq":{seq},"input_seq":{input_seq}}}'
    )


def test_json_frame_tail_reading_agrees_with_a_full_decode():
    message = _json_frame(1234, 1764000000.123456, 17)
    facts = json_frame_facts(message)
    assert (facts.seq, facts.timestamp, facts.input_seq) == (1234, 1764000000.123456, 17)
    assert verify_json_frame(message, facts) is None
    lying = facts.__class__(facts.seq + 1, facts.timestamp, facts.input_seq)
    assert "disagrees" in verify_json_frame(message, lying)


def test_json_frame_without_the_seq_extension_falls_back_to_the_frame_counter():
    message = '{"type":"video_frame","data":"","frame":9,"timestamp":1.5,"fps":1,"format":"jpeg"}'
    assert json_frame_facts(message).seq == 9
    with pytest.raises(ValueError, match="timestamp"):
        json_frame_facts('{"type":"video_frame"}')


def test_binary_frame_header():
    header = struct.pack(">4sIdHHHHIB3x", b"BAV1", 42, 1.25, 390, 844, 390, 844, 5, 1)
    facts = binary_frame_facts(header + b"\xff\xd8")
    assert (facts.seq, facts.timestamp, facts.input_seq) == (42, 1.25, 5)
    with pytest.raises(ValueError, match="magic"):
        binary_frame_facts(b"XXXX" + header[4:])
    with pytest.raises(ValueError, match="shorter"):
        binary_frame_facts(header[:10])


def test_only_loopback_urls_unless_allowed():
    assert check_url("http://127.0.0.1:8000", allow_remote=False) == "http://127.0.0.1:8000"
    assert check_url("ws://localhost:9", allow_remote=False) == "http://localhost:9"
    assert check_url("http://[::1]:8000/", allow_remote=False) == "http://[::1]:8000"
    for url in ("http://10.0.0.1:8000", "http://192.168.1.2", "http://example.com"):
        with pytest.raises(TargetRefused, match="not a loopback"):
            check_url(url, allow_remote=False)
    assert check_url("http://10.0.0.1:8000", allow_remote=True) == "http://10.0.0.1:8000"


def test_the_command_line_refuses_a_remote_url_before_sending_anything(capsys):
    with pytest.raises(SystemExit) as exited:
        bench.main(["fanout", "--url", "http://10.1.2.3:8000"])
    assert exited.value.code == 2
    assert "not a loopback address" in capsys.readouterr().err


def test_fractions_are_of_the_frames_the_capture_produced_in_the_window():
    def viewer(index, first, last, frames):
        return {"index": index, "device": 0, "frames": frames, "bytes": frames * 1000,
                "first_seq": first, "last_seq": last, "latency": {"100": frames},
                "first_frame_at": 1.0, "close_code": None, "error": None}  # fmt: skip

    rows, aggregate, latency = summarize_viewers(
        [viewer(0, 101, 200, 100), viewer(1, 103, 198, 80)], duration=4.0, cpu_seconds=1.8
    )
    assert aggregate["source_frames"] == 100
    assert [r["fraction"] for r in rows] == [1.0, 0.8]
    assert aggregate["fraction_min"] == 0.8
    assert aggregate["delivered_fps"] == 45.0
    assert aggregate["server_cpu_us_per_frame"] == 10000.0
    assert latency.quantile(0.5) == 10.0


def test_proc_net_tcp_and_the_stall_trace():
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt\n"
        "   0: 0100007F:1F90 0100007F:C350 01 00004000:00000000 00:00000000 00000000\n"
        "   1: 0100007F:C350 0100007F:1F90 01 00000000:00002000 00:00000000 00000000\n"
    )
    entries = parse_proc_net_tcp(text)
    assert entries[0] == TcpEntry(8080, 50000, 1, 0x4000)
    trace = StallTrace(client_port=50000, connected_at=100.0)
    trace.observe(100.1, TcpEntry(8080, 50000, 1, 4000))
    trace.observe(100.3, TcpEntry(8080, 50000, 1, 16384))
    trace.observe(100.5, TcpEntry(8080, 50000, 1, 16384))
    trace.observe(103.6, TcpEntry(8080, 50000, 4, 16384))  # FIN_WAIT1: the server closed it
    trace.observe(104.0, None)
    trace.settle()
    summary = trace.to_json()
    assert summary["buffers_full_after_s"] == 0.3
    assert summary["socket_closed_after_s"] == 3.6
    assert summary["server_socket_state"] == "FIN_WAIT1"


@pytest.mark.parametrize("name", ["http", "rounds"])
def test_the_connection_scenarios_have_their_options_and_a_plan_entry(name, tmp_path):
    args = bench.build_parser().parse_args([name, "--quick"])
    args.base_url = None
    ctx = bench.Context(args, Reporter(progress=False), Results(tmp_path / "r.jsonl"), tmp_path)
    ((planned, limit, run),) = bench.plan(ctx, args)
    assert planned == name and limit > 60 and callable(run)
    assert (args.requests, args.http_connections, args.idle) == (4000, 16, 1000)
    assert (args.keep_alive_timeout, args.rounds, args.round_viewers) == (5.0, 5, 500)
    assert name in (bench.__doc__ or "")


# --- every scenario, for real -----------------------------------------------------------------

SCENARIOS = {
    "fanout": ["--viewers", "2", "--duration", "0.5"],
    "ceiling": ["--viewers", "2", "--duration", "0.5", "--format", "binary", "--no-plots"],
    "churn": ["--cycles", "20", "--concurrency", "4", "--no-plots"],
    "flood": ["--bursts", "1", "--attempts", "12", "--no-plots"],
    "slow": ["--stalled", "1", "--normal", "2", "--duration", "0.5", "--deadline", "0.5",
             "--stall-window", "2", "--no-plots"],
    "control": ["--taps", "3", "--no-plots"],
    "soak": ["--minutes", "0.04", "--population", "3", "--no-plots"],
    "memory": ["--memory-viewers", "5", "--duration", "0.5", "--no-plots"],
    "http": ["--requests", "40", "--http-connections", "2", "--idle", "20",
             "--keep-alive-timeout", "1", "--no-plots"],
    "rounds": ["--rounds", "2", "--round-viewers", "3", "--deadline", "0.5", "--no-plots"],
}  # fmt: skip
# Run on its own after the others: its encoders would take the CPU the others' timings need.
H264_ARGS = ["--h264-viewers", "2", "--duration", "0.5", "--joins", "2", "--clip-frames", "4",
             "--no-plots"]  # fmt: skip


async def _run_scenario(base: Path, found: dict[str, dict], name: str, args: list[str]) -> None:
    out = base / name
    command = [sys.executable, "-m", "benchmarks", name, *args, "--quick", "--no-progress",
               "--output", str(out)]  # fmt: skip
    done = await trio.run_process(command, cwd=ROOT, capture_stdout=True, check=False)
    (path,) = out.glob(f"{name}-*.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    found[name] = {"code": done.returncode, "stdout": done.stdout.decode(),
                   "records": records, "dir": out}  # fmt: skip


@pytest.fixture(scope="module")
def h264_run(tmp_path_factory) -> dict:
    found: dict[str, dict] = {}

    async def run() -> None:
        with trio.fail_after(120):
            await _run_scenario(tmp_path_factory.mktemp("bench-h264"), found, "h264", H264_ARGS)

    trio.run(run)
    return found["h264"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """Run every scenario at once; each one's exit code, output and JSON-lines records."""
    base = tmp_path_factory.mktemp("bench")
    found: dict[str, dict] = {}

    async def one(name: str, args: list[str]) -> None:
        out = base / name
        command = [sys.executable, "-m", "benchmarks", name, *args, "--quick", "--no-progress",
                   "--output", str(out)]  # fmt: skip
        done = await trio.run_process(command, cwd=ROOT, capture_stdout=True, check=False)
        (path,) = out.glob(f"{name}-*.jsonl")
        records = [json.loads(line) for line in path.read_text().splitlines()]
        found[name] = {"code": done.returncode, "stdout": done.stdout.decode(),
                       "records": records, "dir": out}  # fmt: skip

    async def all_of_them() -> None:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for name, args in SCENARIOS.items():
                    nursery.start_soon(one, name, args)

    trio.run(all_of_them)
    return found


def _kind(run: dict, kind: str) -> list[dict]:
    return [r for r in run["records"] if r["kind"] == kind]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_each_scenario_runs_and_judges_its_targets(runs, name):
    run = runs[name]
    assert run["code"] == 0, run["stdout"][-3000:]
    assert not _kind(run, "problem")
    (meta,) = _kind(run, "meta")
    assert meta["machine"]["cores"] >= 1 and meta["machine"]["python"]
    assert meta["command"].startswith(f"python -m benchmarks {name}")
    if name != "ceiling":
        targets = _kind(run, "target")
        assert targets and all(t["verdict"] in ("PASS", "FAIL", "n/a") for t in targets)
        assert all(t["verdict"] in run["stdout"] for t in targets)
    assert list(run["dir"].glob(f"{name}-*.md"))


def _load(run: dict, name: str) -> tuple[dict, list[dict]]:
    (aggregate,) = [r for r in _kind(run, "run") if r["run"] == name]
    return aggregate, [r for r in _kind(run, "viewer") if r["run"] == name]


def _has_viewer_figures(aggregate: dict, viewers: list[dict], count: int) -> None:
    assert aggregate["viewers"] == count == len(viewers)
    assert aggregate["delivered_frames"] > 0 and aggregate["delivered_fps"] > 0
    assert aggregate["delivered_MBps"] > 0
    assert aggregate["latency_p50_ms"] is not None and aggregate["latency_p99_ms"] is not None
    assert aggregate["server_cpu_us_per_frame"] is not None
    assert aggregate["server_rss_mb"] is not None and "rss_per_viewer_kb" in aggregate
    assert aggregate["refusals"] == {} and aggregate["errors"] == {}
    assert aggregate["verified_frames"] >= count and aggregate["verify_failures"] == []
    for viewer in viewers:
        assert viewer["frames"] > 0 and 0 < viewer["fraction"] <= 1
        assert viewer["fps"] > 0 and viewer["latency_p50_ms"] is not None
        assert viewer["latency_p99_ms"] >= viewer["latency_p50_ms"]


def test_fanout_reports_viewer_figures_against_the_ceiling(runs):
    run = runs["fanout"]
    aggregate, viewers = _load(run, "fanout-2-json")
    _has_viewer_figures(aggregate, viewers, 2)
    assert aggregate["health_samples"] > 0 and aggregate["health_p99_ms"] is not None
    assert aggregate["source_frames_stats"] > 0
    assert aggregate["ceiling_ratio"] > 0
    ceiling, ceiling_viewers = _load(run, "ceiling-2-json")
    _has_viewer_figures(ceiling, ceiling_viewers, 2)
    names = {t["name"] for t in _kind(run, "target")}
    assert {"2 viewers, json: latency p99", "2 viewers, json: /health p99 during the load",
            "2 viewers, json: delivered frames/s vs the ceiling"} <= names  # fmt: skip
    plots = sorted(p.name.rsplit("-", 2)[1:] for p in run["dir"].glob("*.png"))
    assert plots == [["fanout", "fps.png"], ["fanout", "latency.png"]]  # the ceiling drawn in


def test_ceiling_streams_binary_frames(runs):
    aggregate, viewers = _load(runs["ceiling"], "ceiling-2-binary")
    _has_viewer_figures(aggregate, viewers, 2)


def test_churn_counts_cycles_and_checks_the_counters(runs):
    (figures,) = _kind(runs["churn"], "figures")
    assert figures["completed"] == 20 and figures["outcomes"] == {"ok": 20}
    assert figures["rss_before_mb"] > 0 and figures["rss_growth_mb"] is not None
    after = figures["counters_after"]
    assert after["client_connections"] >= 20 and after["difference"] is not None
    names = {t["name"] for t in _kind(runs["churn"], "target")}
    assert "20 cycles: counters balance" in names


def test_flood_times_each_refusal_and_its_code(runs):
    (figures,) = _kind(runs["flood"], "figures")
    assert figures["attempts"] == 12
    assert figures["refusals_by_code"].get("4009", 0) > 0  # the full session
    assert figures["close_p99_ms"] is not None and figures["health_p99_ms"] is not None


def test_slow_compares_normal_viewers_with_and_without_stalled_ones(runs):
    (figures,) = _kind(runs["slow"], "figures")
    assert figures["fraction_mean_without_stalls"] > 0
    assert figures["fraction_mean_with_stalls"] is not None
    assert len(figures["stalled"]) == 1 and len(figures["stalled_close_codes"]) == 1
    assert figures["stall_reached_server_after_s"][0] is not None
    assert len(_kind(runs["slow"], "run")) == 2


def test_control_measures_tap_to_frame(runs):
    (figures,) = _kind(runs["control"], "figures")
    assert figures["acked"] == 3 and figures["covered_by_a_frame"] == 3
    assert figures["tap_to_frame_p50_ms"] > 0 and figures["problems"] == []


def test_soak_records_rss_over_time(runs):
    (figures,) = _kind(runs["soak"], "figures")
    assert figures["frames"] > 0 and figures["rss_start_mb"] > 0
    (series,) = _kind(runs["soak"], "series")
    assert len(series["points"]) >= 2


def test_memory_reports_rss_per_viewer(runs):
    aggregate, viewers = _load(runs["memory"], "memory-5-at-1fps")
    assert aggregate["streaming_viewers"] == 5 == len(viewers)
    assert aggregate["rss_per_viewer_kb"] is not None


def test_http_measures_each_part_and_the_descriptors_after_it(runs):
    rows = {r["part"]: r for r in _kind(runs["http"], "row")}
    assert set(rows) == {"keep-alive", "close", "nginx keep-alive", "nginx close", "idle"}
    for part in ("keep-alive", "close", "nginx keep-alive", "nginx close"):
        row = rows[part]
        assert row["requests"] == 40 and row["ok"] + row["failed"] > 0
        assert row["fds_before"] > 0 and row["fds_peak"] >= row["fds_before"]
        assert "fds_back_after_s" in row
    assert rows["idle"]["connections"] == 20 and rows["idle"]["p99_ms"] is not None
    names = {t["name"] for t in _kind(runs["http"], "target")}
    assert "close: server descriptors back at the baseline" in names
    assert "/health p99 with 20 idle connections open" in names


def test_h264_compares_both_streams_in_one_run(h264_run):
    assert h264_run["code"] == 0, h264_run["stdout"][-3000:]
    assert not _kind(h264_run, "problem")
    targets = _kind(h264_run, "target")
    assert targets and all(t["verdict"] in h264_run["stdout"] for t in targets)
    rows = _kind(h264_run, "row")
    codecs = [r for r in rows if r["table"] == "h264: codecs on the same frames"]
    assert {r["clip"] for r in codecs} == {"simulated device, from the server", "UI clip"}
    h264 = [r for r in codecs if r["codec"].startswith("H.264")]
    assert all(0 < r["ratio"] < 1 and r["psnr_vs_input_db"] > 30 for r in h264)
    wire = [r for r in rows if r["table"] == "h264: the simulated device through the server"]
    assert {r["codec"] for r in wire} == {"JPEG binary", "H.264"}
    assert all(r["fps_per_viewer"] > 0 and r["errors"] == 0 for r in wire)
    joins = [r for r in rows if r["table"] == "h264: join to first decoded frame"]
    assert {r["policy"] for r in joins} == {"JPEG", "idr", "gop", "idr_or_gop"}
    assert all(r["failed"] == 0 and r["first_p50_ms"] is not None for r in joins)


def test_holding_the_stream_needs_every_viewer_at_95_percent_within_100_ms():
    def aggregate(fraction_min, p99, streaming=3, made=30.0):
        return {"fraction_min": fraction_min, "latency_p99_ms": p99,
                "streaming_viewers": streaming, "source_fps": made}  # fmt: skip

    assert holds_the_stream(aggregate(0.95, 100.0), 3)
    assert not holds_the_stream(aggregate(0.949, 20.0), 3)
    assert not holds_the_stream(aggregate(1.0, 100.1), 3)
    assert not holds_the_stream(aggregate(1.0, 20.0, streaming=2), 3)  # one never streamed
    assert not holds_the_stream(aggregate(None, None, streaming=0), 3)
    # Every frame the capture made, but the capture fell behind its rate: not held.
    assert not holds_the_stream(aggregate(1.0, 20.0, made=24.0), 3)
    assert holds_the_stream(aggregate(1.0, 20.0, made=28.5), 3)
    assert holds_the_stream(aggregate(0.96, 20.0, made=31.0), 3)
    # The rate is the server's own: 14.5 fps holds a 15 fps capture, not a 30 fps one.
    assert holds_the_stream(aggregate(1.0, 20.0, made=14.5), 3, fps=15)
    assert not holds_the_stream(aggregate(1.0, 20.0, made=14.5), 3)


def test_capacity_ramps_each_format_and_reports_its_largest_holding_count(tmp_path):
    """On its own: an H.264 encoder beside the other scenarios would skew their timing."""
    command = [sys.executable, "-m", "benchmarks", "capacity", "--viewers", "3,1",
               "--formats", "binary,h264", "--duration", "0.5", "--quick", "--no-progress",
               "--no-plots", "--output", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout.decode()[-3000:]
    (path,) = tmp_path.glob("capacity-*.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    (figures,) = [r for r in records if r["kind"] == "figures"]
    assert set(figures["largest_holding"]) == {"binary", "h264"}
    for fmt, tried in figures["tried"].items():
        assert [t["viewers"] for t in tried] == [1, 3][: len(tried)]  # ascending, stops at a miss
        assert all(t["held"] for t in tried[:-1])
        held = [t["viewers"] for t in tried if t["held"]]
        assert figures["largest_holding"][fmt] == (held[-1] if held else None)
    loads = {r["run"] for r in records if r["kind"] == "run"}
    assert {"capacity-1-binary", "capacity-1-h264"} <= loads
    (target,) = [r for r in records if r["kind"] == "target"]
    assert target["name"].startswith("h264: largest viewer count")


def test_rounds_records_the_rss_after_each_round(runs):
    rows = _kind(runs["rounds"], "row")
    assert [r["round"] for r in rows] == ["warm-up", "1", "2"]
    assert all(r["connected"] == 3 and r["rss_mb"] > 0 for r in rows)
    assert rows[1]["rss_vs_baseline_mb"] is not None
    assert rows[2]["rss_vs_first_mb"] == round(rows[2]["rss_mb"] - rows[1]["rss_mb"], 1)
    names = {t["name"] for t in _kind(runs["rounds"], "target")}
    assert "round 2: server RSS after it vs after round 1" in names
    assert "round 2: server RSS after it vs after the round before" in names


def test_auth_compares_admission_with_and_without_tokens(tmp_path):
    """Run on its own, not with the others: its two servers would crowd the flood's timing."""
    command = [sys.executable, "-m", "benchmarks", "auth", "--connects", "3", "--quick",
               "--no-progress", "--no-plots", "--output", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout.decode()[-3000:]
    (path,) = tmp_path.glob("auth-*.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    (figures,) = [r for r in records if r["kind"] == "figures"]
    for mode in ("none", "token"):
        assert figures[f"{mode}_first_frame_p50_ms"] > 0 and figures[f"{mode}_rest_p99_ms"] > 0
    (target,) = [r for r in records if r["kind"] == "target"]
    assert target["verdict"] in ("PASS", "FAIL") and target["verdict"] in done.stdout.decode()


def test_webrtc_counts_every_peers_frames_against_the_capture(tmp_path):
    """Run alone, not beside the other scenarios: its aiortc clients need the CPU."""
    command = [sys.executable, "-m", "benchmarks", "webrtc", "--peers", "1,2", "--duration", "1",
               "--quick", "--no-progress", "--no-plots", "--output", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = tmp_path.glob("webrtc-*.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    steps = {r["run"]: r for r in records if r["kind"] == "figures"}
    assert {"1 peers", "largest"} <= set(steps)
    first = steps["1 peers"]
    assert first["peers"] == 1 and first["capture_frames"] > 0
    assert 0 <= first["worst_share"] <= first["best_share"]
    assert first["server_cpu_percent"] > 0 and first["clients_cpu_percent"] > 0
    targets = [r for r in records if r["kind"] == "target"]
    assert targets and all(t["verdict"] in done.stdout for t in targets)


@pytest.fixture(scope="module")
def record_run(tmp_path_factory) -> dict:
    found: dict[str, dict] = {}

    async def run() -> None:
        with trio.fail_after(120):
            args = ["--record-viewers", "2", "--duration", "0.5", "--no-plots"]
            await _run_scenario(tmp_path_factory.mktemp("bench-record"), found, "record", args)

    trio.run(run)
    return found["record"]


def test_record_measures_viewers_with_and_without_a_recording(record_run):
    assert record_run["code"] == 0, record_run["stdout"][-3000:]
    assert not _kind(record_run, "problem")
    rows = {r["run"]: r for r in _kind(record_run, "row")}
    assert set(rows) == {"without recording", "while recording"}
    assert all(r["fps_per_viewer"] > 0 and r["errors"] == 0 for r in rows.values())
    recorded = rows["while recording"]
    assert recorded["video_frames"] > 0 and recorded["video_s"] > 0
    names = {t["name"] for t in _kind(record_run, "target")}
    assert "frames per viewer while recording" in names
