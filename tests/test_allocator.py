"""Returning freed heap to the system: when it is worth it, and that it happens."""

from __future__ import annotations

import trio

from bridge_actors._services.allocator import AllocatorTrimmer, TrimPolicy, glibc_allocator

MB = 1024 * 1024


def test_a_trim_waits_for_enough_free_memory_and_resident_growth():
    policy = TrimPolicy(threshold_mb=16)
    assert not policy.should_trim(15 * MB, 200 * MB)  # too little free to bother
    assert policy.should_trim(16 * MB, 200 * MB)
    policy.trimmed(150 * MB)
    # Trimmed pages still count as free: only renewed resident growth means more to give.
    assert not policy.should_trim(40 * MB, 160 * MB)
    assert policy.should_trim(40 * MB, 190 * MB)


def test_resident_memory_given_back_otherwise_lowers_the_mark():
    policy = TrimPolicy(threshold_mb=16)
    policy.trimmed(150 * MB)
    assert not policy.should_trim(40 * MB, 120 * MB)
    assert policy.should_trim(40 * MB, 140 * MB)


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
    assert not await trimmer.check()  # nothing new since
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
