"""Three real instances on a real Redis behind a real nginx (deploy/nginx-cluster.conf):
one session directory for all, routing by session id, failover when an instance dies,
and an instance that keeps serving what it owns while Redis is away."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio
import trio_websocket
from cluster import running_cluster_nginx, running_instances, running_redis
from conftest import close_of

from bridge_actors._cluster.node import ClusterNode, RedisUnavailable
from bridge_actors.wire import SESSION_FULL, parse_binary_header

LEASE = 1.0
HEARTBEAT = 0.25
SHORT_LEASE = {"cluster_lease": str(LEASE), "cluster_heartbeat": str(HEARTBEAT)}
START_PATIENCE = 30


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float) -> None:
    """Poll an HTTP condition: another process's state has no event to wait on."""
    with trio.fail_after(within):
        while not await check():  # noqa: ASYNC110
            await trio.sleep(0.05)


async def answers(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(url)).status_code == 200
    except httpx.TransportError:
        return False


async def ready(client: httpx.AsyncClient, instances) -> None:
    for instance in instances:
        await eventually(
            lambda i=instance: answers(client, f"{i.url}/readyz"), within=START_PATIENCE
        )


async def create(client: httpx.AsyncClient, base: str) -> dict[str, Any]:
    configs = (await client.get(f"{base}/api/sessions/configurations")).json()["configurations"]
    body = {
        "device_type": configs["device_types"][0],
        "ios_version": configs["ios_versions"][0],
    }
    response = await client.post(f"{base}/api/sessions/create", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def listed(client: httpx.AsyncClient, base: str) -> dict[str, dict[str, Any]]:
    response = await client.get(f"{base}/api/sessions/")
    assert response.status_code == 200, response.text
    return {item["session_id"]: item for item in response.json()["sessions"]}


async def frames(url: str, count: int) -> list[int]:
    async with trio_websocket.open_websocket_url(url) as ws:
        return [parse_binary_header(await ws.get_message())["seq"] for _ in range(count)]


async def test_a_session_created_through_nginx_is_known_everywhere_and_streams_from_its_owner(
    tmp_path,
):
    with (
        running_redis() as redis,
        running_instances(tmp_path / "instances", redis, 3) as instances,
        running_cluster_nginx(tmp_path / "nginx", instances) as port,
    ):
        proxy = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=10) as client:
            await ready(client, instances)
            await eventually(lambda: answers(client, f"{proxy}/livez"), within=START_PATIENCE)
            created = await create(client, proxy)
            session_id = created["session_id"]
            owner, _, _ = session_id.partition("-")
            assert owner in {i.instance_id for i in instances}
            for instance in instances:
                items = await listed(client, instance.url)
                assert items[session_id]["instance"] == owner
                info = (await client.get(f"{instance.url}/api/sessions/{session_id}")).json()
                assert info["session"]["session_id"] == session_id
                status = (await client.get(f"{instance.url}/status/{session_id}")).json()
                assert status["session_id"] == session_id
            # Through nginx every request about the session lands on its owner.
            for _ in range(6):
                stats = (await client.get(f"{proxy}/api/sessions/{session_id}")).json()
                assert stats["session"]["instance"] == owner
            seqs = await frames(f"ws://127.0.0.1:{port}/ws/{session_id}/video?format=binary", 3)
            assert seqs == list(range(seqs[0], seqs[0] + 3))
            metrics = (await client.get(f"{instances[0].url}/metrics")).text
            assert 'bridge_instance_info{instance="bridge1"} 1.0' in metrics
            assert 'bridge_event_loop_lag_seconds{quantile="0.99"}' in metrics
            assert (await client.get(f"{instances[1].url}/stats")).json()["instance"] == "bridge2"

            deleted = await client.delete(f"{proxy}/api/sessions/{session_id}")
            assert deleted.status_code == 200
            for instance in instances:
                assert session_id not in await listed(client, instance.url)


async def test_a_killed_instance_s_sessions_are_lost_within_the_lease_and_return_with_it(
    tmp_path,
):
    with (
        running_redis() as redis,
        running_instances(tmp_path / "instances", redis, 3, **SHORT_LEASE) as instances,
        running_cluster_nginx(tmp_path / "nginx", instances) as port,
    ):
        victim, survivors = instances[2], instances[:2]
        async with httpx.AsyncClient(timeout=10) as client:
            await ready(client, instances)
            session_id = (await create(client, victim.url))["session_id"]
            assert session_id.startswith(f"{victim.instance_id}-")
            for survivor in survivors:
                assert (await listed(client, survivor.url))[session_id]["state"] != "lost"

            victim.kill()

            async def lost_everywhere() -> bool:
                for survivor in survivors:
                    if (await listed(client, survivor.url))[session_id]["state"] != "lost":
                        return False
                return True

            # The lease, one heartbeat, and the polling and the answer's own time.
            await eventually(lost_everywhere, within=LEASE + HEARTBEAT + 1.0)
            status = (await client.get(f"{survivors[0].url}/status/{session_id}")).json()
            assert status["simulator_accessible"] is False
            # A viewer through nginx: the owner is down, another instance says why.
            await eventually(lambda: answers(client, f"http://127.0.0.1:{port}/livez"), within=10)
            url = f"ws://127.0.0.1:{port}/ws/{session_id}/video"
            async with trio_websocket.open_websocket_url(url) as ws:
                code, reason = await close_of(ws)
            assert (code, reason) == (4004, "session lost: its instance bridge3 stopped answering")

            victim.start()  # the same state dir: it re-adopts the session

            async def back_everywhere() -> bool:
                for survivor in survivors:
                    item = (await listed(client, survivor.url)).get(session_id)
                    if item is None or item["state"] == "lost":
                        return False
                return True

            await eventually(back_everywhere, within=START_PATIENCE)
            assert session_id in await listed(client, victim.url)


async def test_without_redis_owned_sessions_stream_creates_are_refused_and_it_recovers(
    tmp_path,
):
    with (
        running_redis() as redis,
        running_instances(tmp_path / "instances", redis, 1, **SHORT_LEASE) as instances,
    ):
        (instance,) = instances
        async with httpx.AsyncClient(timeout=10) as client:
            await ready(client, instances)
            session_id = (await create(client, instance.url))["session_id"]
            video = f"ws://127.0.0.1:{instance.port}/ws/{session_id}/video?format=binary"

            redis.stop()

            async def not_ready() -> bool:
                return (await client.get(f"{instance.url}/readyz")).status_code == 503

            await eventually(not_ready, within=10)
            readiness = (await client.get(f"{instance.url}/readyz")).json()
            assert "redis unavailable" in readiness["reasons"]
            refused = await client.post(
                f"{instance.url}/api/sessions/create",
                json={"device_type": "x", "ios_version": "y"},
            )
            assert refused.status_code == 503
            assert "cluster directory is unavailable" in refused.json()["detail"]
            assert session_id in await listed(client, instance.url)
            seqs = await frames(video, 3)
            assert seqs == list(range(seqs[0], seqs[0] + 3))

            redis.start()  # same port: the instance reconnects by itself
            await eventually(lambda: answers(client, f"{instance.url}/readyz"), within=15)
            again = await create(client, instance.url)
            assert again["session_id"] in await listed(client, instance.url)


async def test_creations_per_client_address_hold_across_instances_to_the_exact_count(tmp_path):
    limit = 4
    with (
        running_redis() as redis,
        running_instances(
            tmp_path / "instances", redis, 3, create_sessions_per_minute=str(limit)
        ) as instances,
    ):
        async with httpx.AsyncClient(timeout=10) as client:
            await ready(client, instances)
            configs = (await client.get(f"{instances[0].url}/api/sessions/configurations")).json()
            body = {
                "device_type": configs["configurations"]["device_types"][0],
                "ios_version": configs["configurations"]["ios_versions"][0],
            }
            statuses: list[int] = []

            async def attempt(instance) -> None:
                response = await client.post(f"{instance.url}/api/sessions/create", json=body)
                statuses.append(response.status_code)

            # Three attempts at each instance at once: the count is the cluster's.
            async with trio.open_nursery() as nursery:
                for instance in instances * 3:
                    nursery.start_soon(attempt, instance)
            assert sorted(statuses) == [200] * limit + [429] * (9 - limit)


async def test_the_per_session_cap_holds_for_viewers_arriving_through_any_instance(tmp_path):
    cap = 2
    with (
        running_redis() as redis,
        running_instances(
            tmp_path / "instances", redis, 3, max_connections_per_session=str(cap)
        ) as instances,
        running_cluster_nginx(tmp_path / "nginx", instances) as port,
    ):
        async with httpx.AsyncClient(timeout=10) as client:
            await ready(client, instances)
            await eventually(lambda: answers(client, f"http://127.0.0.1:{port}/livez"), within=10)
            session_id = (await create(client, instances[1].url))["session_id"]
            url = f"ws://127.0.0.1:{port}/ws/{session_id}/video?format=binary"
            async with (
                trio_websocket.open_websocket_url(url) as first,
                trio_websocket.open_websocket_url(url) as second,
            ):
                await first.get_message()
                await second.get_message()
                async with trio_websocket.open_websocket_url(url) as third:
                    code, _ = await close_of(third)
                assert code == SESSION_FULL
            # Asked directly, an instance that does not own the session says who does.
            direct = f"ws://127.0.0.1:{instances[0].port}/ws/{session_id}/video"
            async with trio_websocket.open_websocket_url(direct) as ws:
                assert await close_of(ws) == (4004, "session is served by instance bridge2")


@pytest.mark.parametrize("bad", ["a-b", "", "x" * 33])
def test_an_instance_id_that_the_proxy_could_not_route_is_refused(bad):
    from bridge_actors import Settings
    from bridge_actors._settings import InvalidSettings

    with pytest.raises(InvalidSettings, match="instance_id"):
        Settings(instance_id=bad)


async def test_a_read_whose_client_was_given_up_while_it_ran_is_redis_away_not_an_error():
    """Redis lost mid-call: the heartbeat closes its client's pool under a reader, whose
    call then fails with coredis's RuntimeError. A caller must see RedisUnavailable (an
    admission falls back to the local limiter), never an internal error."""

    async def device_types() -> tuple[str, ...]:
        await trio.lowlevel.checkpoint()
        return ("iPhone 15 (simulated)",)

    async def connected() -> bool:
        await trio.lowlevel.checkpoint()
        return node.connected

    async def lost() -> bool:
        return not await connected()

    with running_redis() as redis, trio.fail_after(60):
        node = ClusterNode(
            redis.url, "b1", lease=5.0, heartbeat=0.2, local_entries=list, device_types=device_types
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await eventually(connected, within=30)  # Redis may still be starting
            assert await node.entry("none") is None
            with pytest.raises(RedisUnavailable, match="failed"):
                async with node._reading(within=30) as client:
                    redis.stop()
                    await eventually(lost, within=30)  # the heartbeat noticed, closed its pool
                    await client.get("anything")
            with pytest.raises(RedisUnavailable, match="not connected"):
                await node.entry("none")
            nursery.cancel_scope.cancel()
