"""Viewer admission decided in Redis for the whole cluster: two real instances on a real
Redis, started once for the module. The per-session cap and the per-(session, address)
window hold to the exact count through reconnects and an owner's restart (crash or clean
stop); a slow or stopped Redis leaves the decision to the instance, and it is counted; a
cleanly stopped instance marks its sessions at once instead of leaving them to its lease."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from contextlib import AsyncExitStack

import httpx
import pytest
import trio
import trio_websocket
from cluster import Instance, Redis, running_instances, running_redis
from test_cluster import START_PATIENCE, answers, create, eventually, listed, ready

from bridge_actors.wire import RATE_LIMITED, SESSION_FULL

CAP = 2
PER_MINUTE = 6
HEARTBEAT = 0.5
# A lease far longer than a heartbeat: a clean stop that shows at once cannot be its expiry.
LEASE = 10.0
SETTINGS = {
    "max_connections_per_session": str(CAP),
    "max_connections_per_minute": str(PER_MINUTE),
    "cluster_heartbeat": str(HEARTBEAT),
    "cluster_lease": str(LEASE),
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[Redis, list[Instance]]]:
    root = tmp_path_factory.mktemp("admission")
    with (
        running_redis() as redis,
        running_instances(root / "instances", redis, 2, **SETTINGS) as instances,
    ):
        yield redis, instances


def video_url(instance: Instance, session_id: str) -> str:
    return f"ws://127.0.0.1:{instance.port}/ws/{session_id}/video?format=binary"


async def attempt(url: str) -> tuple[int, str | None]:
    """Connect, and either read a frame (admitted: 1000) or the close code and reason."""
    async with trio_websocket.open_websocket_url(url) as ws:
        try:
            with trio.fail_after(10):
                await ws.get_message()
        except trio_websocket.ConnectionClosed as closed:
            return closed.reason.code, closed.reason.reason
    return 1000, None


async def admitted_after_releases(url: str) -> tuple[int, str | None]:
    """An attempt that a just-closed viewer's place, on its way back, may refuse with
    4009 a few times first; a refusal costs no place in the window, so retrying is fair."""
    for _ in range(50):
        code, reason = await attempt(url)
        if code != SESSION_FULL:
            return code, reason
        await trio.sleep(0.05)
    return code, reason


async def hold(stack: AsyncExitStack, url: str) -> None:
    """Open a viewer that stays open until ``stack`` closes; as above, a 4009 while a
    just-closed viewer's place is on its way back is retried."""
    for _ in range(50):
        ws = await stack.enter_async_context(trio_websocket.open_websocket_url(url))
        try:
            with trio.fail_after(10):
                await ws.get_message()
            return
        except trio_websocket.ConnectionClosed as closed:
            if closed.reason.code != SESSION_FULL:
                raise
        await trio.sleep(0.05)
    raise AssertionError(f"{url} stayed full")


async def restarted(client: httpx.AsyncClient, instance: Instance, session_id: str) -> None:
    instance.start()
    await eventually(lambda: answers(client, f"{instance.url}/readyz"), within=START_PATIENCE)

    async def adopted() -> bool:
        item = (await listed(client, instance.url)).get(session_id)
        return item is not None and item.get("state") not in ("lost", "stopped")

    await eventually(adopted, within=START_PATIENCE)


async def metric(client: httpx.AsyncClient, instance: Instance, name: str) -> float:
    text = (await client.get(f"{instance.url}/metrics")).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not in /metrics"
    return float(found.group(1))


async def test_the_session_cap_holds_exactly_across_reconnects_and_a_crashed_owner(cluster):
    _, (owner, _other) = cluster
    async with httpx.AsyncClient(timeout=10) as client:
        await ready(client, [owner])
        session_id = (await create(client, owner.url))["session_id"]
        url = video_url(owner, session_id)
        async with AsyncExitStack() as viewers:
            await hold(viewers, url)
            async with AsyncExitStack() as second:
                await hold(second, url)
                code, reason = await attempt(url)
                assert code == SESSION_FULL
                assert (
                    reason == f"session {session_id!r} has reached its limit of {CAP} connections"
                )
            # The second's place comes back, and only one.
            await hold(viewers, url)
            assert (await attempt(url))[0] == SESSION_FULL

            # A crash leaves both places taken in Redis; the restarted owner (a new
            # process start) finds them its dead predecessor's, and sweeps them.
            owner.kill()
            await restarted(client, owner, session_id)

        async with AsyncExitStack() as viewers:
            await hold(viewers, url)
            await hold(viewers, url)
            assert (await attempt(url))[0] == SESSION_FULL
        assert await metric(client, owner, "bridge_admission_local_fallbacks_total") == 0


async def test_the_window_holds_to_the_exact_count_across_instances_and_a_clean_restart(cluster):
    _, (owner, other) = cluster
    async with httpx.AsyncClient(timeout=10) as client:
        await ready(client, [owner, other])
        session_id = (await create(client, owner.url))["session_id"]
        at_owner, at_other = video_url(owner, session_id), video_url(other, session_id)
        for _ in range(PER_MINUTE):
            assert (await admitted_after_releases(at_owner))[0] == 1000
            # Through the other instance's port the answer is where the session is,
            # and it takes no place in the window.
            assert await attempt(at_other) == (4004, "session is served by instance bridge1")
        code, reason = await attempt(at_owner)
        assert code == RATE_LIMITED
        assert reason is not None and reason.startswith("retry_after=")

        # A clean stop marks the session at once: no waiting out the 10 s lease.
        owner.stop()
        item = (await listed(client, other.url))[session_id]
        assert (item["state"], item.get("reason")) == ("stopped", "instance bridge1 stopped"), item
        info = (await client.get(f"{other.url}/api/sessions/{session_id}")).json()
        assert (info["session"]["state"], info["session"]["status"]) == ("stopped", "offline")
        assert await attempt(at_other) == (
            4004,
            "session stopped: its instance bridge1 was stopped",
        )

        # The window is Redis's: the restarted owner still counts the six of this minute.
        await restarted(client, owner, session_id)
        assert (await attempt(at_owner))[0] == RATE_LIMITED


async def test_a_slow_or_stopped_redis_leaves_admission_to_the_instance(cluster):
    redis, (owner, _other) = cluster
    async with httpx.AsyncClient(timeout=10) as client:
        await ready(client, [owner])
        session_id = (await create(client, owner.url))["session_id"]
        url = video_url(owner, session_id)
        name = "bridge_admission_local_fallbacks_total"
        before = await metric(client, owner, name)
        decided = await metric(client, owner, "bridge_admission_redis_decisions_total")

        assert redis.process is not None
        os.kill(redis.process.pid, signal.SIGSTOP)  # Redis hangs: every call times out
        try:
            assert (await attempt(url))[0] == 1000
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        assert await metric(client, owner, name) == before + 1

        redis.stop()  # Redis gone: the instance's own limiter still decides, cap included
        async with trio_websocket.open_websocket_url(url) as first:
            await first.get_message()
            async with trio_websocket.open_websocket_url(url) as second:
                await second.get_message()
                third = await attempt(url)
                assert third[0] == SESSION_FULL, (third, owner.log_tail())
        assert await metric(client, owner, name) == before + 4
        assert await metric(client, owner, "bridge_admission_redis_decisions_total") == decided

        redis.start()  # back: the instance reconnects and Redis decides again
        await eventually(lambda: answers(client, f"{owner.url}/readyz"), within=15)
        assert (await admitted_after_releases(url))[0] == 1000
        assert await metric(client, owner, "bridge_admission_redis_decisions_total") > decided
