"""Returning freed heap to the system: when it is worth it, and that it happens."""

from __future__ import annotations

import trio

from bridge_actors._services.allocator import AllocatorTrimmer, TrimPolicy, glibc_allocator

MB = 1024 * 1024


def test_a_trim_waits_for_enough_free_memory():
    policy = TrimPolicy(threshold_mb=16, spacing=4)
    assert not policy.should_trim(15 * MB, now=100)  # too little free to bother
    assert policy.should_trim(16 * MB, now=100)


def test_trims_are_spaced_out_while_the_heap_stays_fragmented():
    policy = TrimPolicy(threshold_mb=16, spacing=4)
    policy.trimmed(now=100)
    assert not policy.should_trim(40 * MB, now=103)
    assert policy.should_trim(40 * MB, now=104)


class FakeAllocator:
    def __init__(self) -> None:
        self.free = 0
        self.resident = 100 * MB
        self.trims = 0

    def free_bytes(self) -> int:
        return self.free

    def resident_bytes(self) -> int:
        return self.resident

    def trim(self) -> None:
        self.trims += 1
        self.resident -= 30 * MB


async def test_the_trimmer_trims_once_per_crowd_that_left():
    allocator = FakeAllocator()
    trimmer = AllocatorTrimmer(interval=5, allocator=allocator, run_in_worker=lambda fn: _now(fn))
    allocator.free, allocator.resident = 40 * MB, 140 * MB
    assert await trimmer.check()
    assert not await trimmer.check()  # too soon after the last
    stats = trimmer.statistics()
    assert (stats.available, stats.checks, stats.trims, stats.returned_mb) == (True, 2, 1, 30.0)


async def _now(fn):
    await trio.lowlevel.checkpoint()
    return fn()


async def test_the_trimmer_runs_on_its_interval(autojump_clock):
    allocator = FakeAllocator()
    trimmer = AllocatorTrimmer(interval=5, allocator=allocator, run_in_worker=_now)
    async with trio.open_nursery() as nursery:
        await nursery.start(trimmer.run)
        await trio.sleep(12)
        assert trimmer.statistics().checks == 2
        nursery.cancel_scope.cancel()


def test_without_glibc_the_trimmer_does_nothing():
    trimmer = AllocatorTrimmer(allocator=None)
    assert not trio.run(trimmer.check)
    assert trimmer.statistics().available is False


def test_glibc_gives_back_freed_heap():
    allocator = glibc_allocator()
    assert allocator is not None  # the Linux machines this runs on use glibc
    held = [bytearray(40_000) for _ in range(1500)]  # medium buffers, as frames in flight
    keep = [bytes(8) for _ in range(1500)]  # small objects allocated between them
    before = allocator.free_bytes()
    del held
    assert allocator.free_bytes() > before
    resident = allocator.resident_bytes()
    allocator.trim()
    assert allocator.resident_bytes() <= resident
    del keep


async def test_garbage_is_collected_once_a_crowd_has_left(autojump_clock, monkeypatch):
    collected = []
    monkeypatch.setattr("gc.collect", lambda *args: collected.append(trio.current_time()) or 0)
    departed = 0
    trimmer = AllocatorTrimmer(
        allocator=None, departures=lambda: departed, collect_after=100, collect_spacing=10
    )
    departed = 99
    await trimmer.check()
    await trimmer.check()
    assert collected == []  # not yet a crowd
    departed = 600
    await trimmer.check()
    assert collected == []  # a crowd still leaving
    await trimmer.check()
    assert len(collected) == 1  # gone: collect once
    await trimmer.check()
    assert len(collected) == 1
    departed = 800
    await trimmer.check()
    await trimmer.check()  # another crowd gone, but too soon after the last collection
    assert len(collected) == 1
    await trio.sleep(10)
    await trimmer.check()
    assert len(collected) == 2
    assert trimmer.statistics().collections == 2


async def test_steady_churn_never_pays_for_a_collection(autojump_clock, monkeypatch):
    collected = []
    monkeypatch.setattr("gc.collect", lambda *args: collected.append(1) or 0)
    departed = 0
    trimmer = AllocatorTrimmer(allocator=None, departures=lambda: departed, collect_after=100)
    for _ in range(100):
        departed += 50
        await trimmer.check()
        await trio.sleep(1)
    assert collected == []
