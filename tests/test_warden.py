import subprocess
import sys
from dataclasses import dataclass

import psutil
import pytest
import trio

from bridge_actors._errors import InvalidSettings
from bridge_actors._services.warden import (
    GROWTH_WARMUP,
    Growth,
    GrowthMeter,
    MemorySample,
    MemoryWarden,
    PsutilProbe,
    WardenPolicy,
    WardenTier,
)

# --- policy ----------------------------------------------------------------------------------


def test_policy_tiers_are_fractions_of_the_limit():
    policy = WardenPolicy(1000.0)
    assert policy.tier_for(0.0) is WardenTier.NORMAL
    assert policy.tier_for(799.9) is WardenTier.NORMAL
    assert policy.tier_for(800.0) is WardenTier.ELEVATED
    assert policy.tier_for(999.9) is WardenTier.ELEVATED
    assert policy.tier_for(1000.0) is WardenTier.CRITICAL
    custom = WardenPolicy(1000.0, elevated=0.5, critical=0.9)
    assert custom.tier_for(500.0) is WardenTier.ELEVATED
    assert custom.tier_for(900.0) is WardenTier.CRITICAL


@pytest.mark.parametrize(
    ("args", "name"),
    [((0.0,), "limit_mb"), ((1000.0, 0.0), "elevated"), ((1000.0, 0.9, 0.8), "elevated")],
)
def test_bad_policy_settings_are_named(args, name):
    with pytest.raises(InvalidSettings, match=name):
        WardenPolicy(*args)


# --- fakes -----------------------------------------------------------------------------------


class FakeProbe:
    def __init__(self, rss_mb: float) -> None:
        self.rss_mb = rss_mb
        self.calls = 0

    def __call__(self) -> MemorySample:
        self.calls += 1
        return MemorySample(
            rss_mb=self.rss_mb, vms_mb=2 * self.rss_mb, percent=1.0, available_mb=4096.0
        )


@dataclass
class FakeService:
    last_used: float
    size_mb: float
    viewers: int = 0
    running: bool = True


class FakeTarget:
    """Stopping a service frees its memory in the probe, as killing a capture helper would."""

    def __init__(self, probe: FakeProbe, **services: FakeService) -> None:
        self.probe = probe
        self.services = services
        self.stopped: list[str] = []
        self.stopped_busy: list[str] = []
        self.admission: list[bool] = []
        self.on_stop = lambda key: None

    def idle_services(self) -> list[tuple[str, float]]:
        return [
            (key, service.last_used)
            for key, service in self.services.items()
            if service.running and service.viewers == 0
        ]

    def stop_service(self, key: str, reason: str) -> bool:
        service = self.services[key]
        if service.viewers:
            self.stopped_busy.append(key)
        if not service.running:
            return False
        assert reason
        service.running = False
        self.stopped.append(key)
        self.probe.rss_mb -= service.size_mb
        self.on_stop(key)
        return True

    def set_capture_admission(self, allowed: bool) -> None:
        self.admission.append(allowed)


def make_warden(
    probe: FakeProbe, target: FakeTarget, limit_mb: float = 1000.0, **options
) -> MemoryWarden:
    return MemoryWarden(target, limit_mb=limit_mb, interval=30.0, probe=probe, **options)


def scene(rss_mb: float, **services: FakeService) -> tuple[FakeProbe, FakeTarget, MemoryWarden]:
    """A process at ``rss_mb`` running ``services``, and a warden with the default limit."""
    probe = FakeProbe(rss_mb)
    target = FakeTarget(probe, **services)
    return probe, target, make_warden(probe, target)


# --- warden ----------------------------------------------------------------------------------


async def test_normal_memory_does_nothing(autojump_clock):
    probe, target, warden = scene(100.0, idle=FakeService(0.0, 50.0))
    assert await warden.check() is WardenTier.NORMAL
    assert target.stopped == []
    assert target.admission == []
    stats = warden.statistics()
    assert (stats.tier, stats.memory_cleanups, stats.services_stopped) == ("NORMAL", 0, 0)
    assert stats.ready
    assert stats.last == probe()
    assert stats.start_rss_mb == 100.0


async def test_elevated_stops_every_idle_service_and_counts_a_cleanup(autojump_clock):
    probe, target, warden = scene(
        850.0,
        a=FakeService(1.0, 10.0),
        b=FakeService(2.0, 10.0),
        busy=FakeService(0.0, 400.0, viewers=2),
    )
    assert await warden.check() is WardenTier.ELEVATED
    assert sorted(target.stopped) == ["a", "b"]
    assert probe.calls == 1  # all at once: no re-sampling between stops
    assert target.admission == []
    assert await warden.check() is WardenTier.ELEVATED
    stats = warden.statistics()
    assert (stats.memory_cleanups, stats.services_stopped, stats.ready) == (2, 2, True)
    assert target.stopped_busy == []


async def test_critical_sheds_least_recently_used_until_below_critical(autojump_clock):
    _, target, warden = scene(
        1050.0,
        newest=FakeService(30.0, 100.0),
        oldest=FakeService(10.0, 30.0),
        middle=FakeService(20.0, 400.0),
        busy=FakeService(0.0, 500.0, viewers=1),
    )
    # oldest frees 30 MB (still critical), middle 400 MB (normal): newest survives.
    assert await warden.check() is WardenTier.NORMAL
    assert target.stopped == ["oldest", "middle"]
    assert target.services["newest"].running
    assert target.admission == [False, True]
    assert target.stopped_busy == []
    stats = warden.statistics()
    assert (stats.memory_cleanups, stats.services_stopped, stats.samples) == (1, 2, 3)


async def test_critical_falling_to_elevated_stops_the_remaining_idle(autojump_clock):
    probe, target, warden = scene(
        1010.0,
        oldest=FakeService(1.0, 20.0),
        newer=FakeService(2.0, 5.0),
        newest=FakeService(3.0, 5.0),
    )
    assert await warden.check() is WardenTier.ELEVATED
    assert target.stopped[0] == "oldest"
    assert sorted(target.stopped[1:]) == ["newer", "newest"]
    assert probe.calls == 2
    assert target.admission == [False, True]


async def test_admission_stays_closed_until_memory_recovers(autojump_clock, caplog):
    probe, target, warden = scene(
        1200.0,
        idle=FakeService(0.0, 10.0),
        busy=FakeService(0.0, 900.0, viewers=3),
    )
    with caplog.at_level("INFO", logger="bridge_actors.warden"):
        assert await warden.check() is WardenTier.CRITICAL
        assert target.stopped == ["idle"]
        assert target.admission == [False]
        assert not warden.ready
        assert not warden.statistics().ready
        assert await warden.check() is WardenTier.CRITICAL
        assert target.admission == [False]
        probe.rss_mb = 500.0  # the busy capture's viewers left and it ended
        assert await warden.check() is WardenTier.NORMAL
    assert target.admission == [False, True]
    assert warden.ready
    assert target.stopped_busy == []
    changes = [(r.levelname, r.getMessage()) for r in caplog.records if "tier" in r.getMessage()]
    assert changes == [
        ("WARNING", "memory tier NORMAL -> CRITICAL: rss 1200.0 MB of 1000.0 MB limit"),
        ("INFO", "memory tier CRITICAL -> NORMAL: rss 500.0 MB of 1000.0 MB limit"),
    ]


async def test_a_service_that_gains_a_viewer_while_shedding_is_spared(autojump_clock):
    probe = FakeProbe(1100.0)
    target = FakeTarget(
        probe,
        first=FakeService(1.0, 10.0),
        second=FakeService(2.0, 10.0),
        third=FakeService(3.0, 10.0),
    )

    def viewer_joins_second(key: str) -> None:
        if key == "first":
            target.services["second"].viewers = 1

    target.on_stop = viewer_joins_second
    warden = make_warden(probe, target)
    assert await warden.check() is WardenTier.CRITICAL
    assert target.stopped == ["first", "third"]
    assert target.stopped_busy == []


async def test_each_tier_change_is_logged_once(autojump_clock, caplog):
    probe = FakeProbe(900.0)
    target = FakeTarget(probe)
    warden = make_warden(probe, target)
    with caplog.at_level("INFO", logger="bridge_actors.warden"):
        for _ in range(10):
            await warden.check()
        probe.rss_mb = 100.0
        for _ in range(10):
            await warden.check()
    changes = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert changes == [
        ("WARNING", "memory tier NORMAL -> ELEVATED: rss 900.0 MB of 1000.0 MB limit"),
        ("INFO", "memory tier ELEVATED -> NORMAL: rss 100.0 MB of 1000.0 MB limit"),
    ]
    assert warden.statistics().memory_cleanups == 10


async def test_run_checks_every_interval_and_tracks_growth_after_the_warm_up(autojump_clock):
    probe = FakeProbe(100.0)
    warden = make_warden(probe, FakeTarget(probe))
    with trio.fail_after(10_000):
        async with trio.open_nursery() as nursery:
            await nursery.start(warden.run)
            start = trio.current_time()
            await trio.sleep(1.0)
            probe.rss_mb = 400.0  # start-up: allocated once, not a leak
            await trio.sleep_until(start + GROWTH_WARMUP + 1.0)
            # From here 10 MB an hour, a step per sample.
            while trio.current_time() < start + 3600.0:
                await trio.sleep(30.0)
                probe.rss_mb += 10.0 * 30.0 / 3600.0
            nursery.cancel_scope.cancel()
    stats = warden.statistics()
    assert stats.samples == 3600 // 30 + 1
    assert stats.start_rss_mb == 100.0
    assert stats.rss_growth_mb_per_hour == pytest.approx(10.0, rel=0.05)
    assert stats.rss_growth.window_s == pytest.approx(3600.0 - GROWTH_WARMUP, abs=31)
    assert stats.rss_growth.warmup_s == GROWTH_WARMUP


async def test_growth_is_null_until_the_window_is_long_enough(autojump_clock):
    probe = FakeProbe(100.0)
    warden = make_warden(probe, FakeTarget(probe), growth=GrowthMeter(warmup=60, min_window=600))
    await warden.check()
    probe.rss_mb = 300.0  # the warm-up's growth is never counted
    await trio.sleep(60)
    await warden.check()
    assert warden.statistics().rss_growth == Growth(None, 0.0, 600.0, 60.0)
    probe.rss_mb = 310.0
    await trio.sleep(599)
    await warden.check()
    stats = warden.statistics()
    assert stats.rss_growth_mb_per_hour is None  # 599 s: not yet
    assert stats.rss_growth.window_s == 599.0
    probe.rss_mb = 320.0
    await trio.sleep(1)
    await warden.check()
    growth = warden.statistics().rss_growth
    assert growth.window_s == 600.0
    assert growth.mb_per_hour == pytest.approx(20.0 / 600 * 3600)


def test_growth_meter_settings_are_checked():
    with pytest.raises(InvalidSettings, match="min_window"):
        GrowthMeter(min_window=0)
    with pytest.raises(InvalidSettings, match="warmup"):
        GrowthMeter(warmup=-1)


async def test_default_probe_runs_in_a_thread_and_measures_this_process():
    warden = MemoryWarden(FakeTarget(FakeProbe(0.0)), limit_mb=1e9, interval=1.0)
    with trio.fail_after(30):
        assert await warden.check() is WardenTier.NORMAL
    last = warden.statistics().last
    assert last is not None
    assert last.rss_mb > 0
    assert last.vms_mb >= last.rss_mb
    assert 0 < last.percent < 100
    assert last.available_mb > 0


def test_mismatched_policy_and_limit_is_refused():
    probe = FakeProbe(0.0)
    with pytest.raises(InvalidSettings, match="limit_mb"):
        MemoryWarden(
            FakeTarget(probe), limit_mb=10.0, interval=1.0, probe=probe, policy=WardenPolicy(20.0)
        )


# --- the real probe --------------------------------------------------------------------------

CHILD = (
    "import sys, time\n"
    "b = bytearray(50_000_000)\n"
    "b[::4096] = b'x' * len(b[::4096])\n"  # touch every page so it is resident
    "print('ready', flush=True)\n"
    "time.sleep(30)\n"
)


async def test_psutil_probe_counts_child_processes():
    probe = PsutilProbe()
    before = probe()
    assert before.rss_mb > 0
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE
    )
    try:
        with trio.fail_after(20):
            assert process.stdout is not None
            output = b""
            while b"ready" not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, "child exited before it was ready"
                output += chunk
        with_child = probe()
        assert with_child.rss_mb - before.rss_mb > 40.0
        assert with_child.percent > before.percent
    finally:
        process.kill()
        with trio.move_on_after(10, shield=True):
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()
    # The cached child is gone: it is skipped quietly and no longer counted.
    after = probe()
    assert after.rss_mb - before.rss_mb < 20.0


class RootWithGhostChild:
    """This process, but reporting a child that has already exited and been reaped."""

    def __init__(self, ghost) -> None:
        self._real = psutil.Process()
        self._ghost = ghost

    def memory_info(self):
        return self._real.memory_info()

    def children(self, recursive: bool = False):
        return [self._ghost]


def test_psutil_probe_skips_a_child_that_vanished():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    ghost = psutil.Process(child.pid)
    child.wait(timeout=30)
    with pytest.raises(psutil.NoSuchProcess):
        ghost.memory_info()
    probe = PsutilProbe(RootWithGhostChild(ghost))
    sample = probe()
    assert sample.rss_mb == pytest.approx(psutil.Process().memory_info().rss / 2**20, rel=0.1)
