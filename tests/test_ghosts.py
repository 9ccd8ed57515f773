"""Clients that send faster than they read, then break or stall, on every socket kind:
their slots and descriptors come back, their session can be deleted, and the server
shuts down within its grace."""

from __future__ import annotations

import contextlib

import pytest
import trio
from conftest import close_of, open_ws, running_server
from raw import flood, open_descriptors, raw_websocket, read_to_eof, wait_until

FLOODS = {
    "screenshot": b'{"t":"refresh"}',
    "control": b'{"t":"tap","x":10,"y":10,"id":1}',
    "logs": b'{"type":"filter","filter":"x"}',
    "video": b'{"t":"anything"}',
}
GHOSTS = 10


def active_connections(server) -> int:
    return server.bridge.limiter.statistics().active_connections


@pytest.mark.parametrize("kind", sorted(FLOODS))
async def test_clients_that_flood_and_close_free_their_slots_and_descriptors(tmp_path, kind):
    async with running_server(tmp_path, max_connections_per_session=GHOSTS) as server:
        path = f"/ws/{server.session_id}/{kind}"
        baseline = open_descriptors()
        async with trio.open_nursery() as nursery:
            for _ in range(GHOSTS):

                async def ghost() -> None:
                    async with raw_websocket(server.port, path, receive_buffer=4096) as stream:
                        await flood(stream, FLOODS[kind], 300)
                        await wait_until(lambda: active_connections(server) == GHOSTS)

                nursery.start_soon(ghost)
        # Every one of them closed with unread data: the server must see each as gone.
        await wait_until(lambda: active_connections(server) == 0)
        await wait_until(lambda: open_descriptors() <= baseline)
        async with open_ws(server.ws_url(server.session_id, "control")) as ws:
            await ws.send_message('{"t":"tap","x":1,"y":1,"id":7}')
            assert '"ack"' in await ws.get_message()


@pytest.mark.parametrize("kind", sorted(FLOODS))
async def test_clients_that_flood_and_stall_end_when_their_session_is_deleted(tmp_path, kind):
    async with running_server(tmp_path, max_connections_per_session=GHOSTS) as server:
        path = f"/ws/{server.session_id}/{kind}"
        async with trio.open_nursery() as nursery:
            ended = []
            for _ in range(3):

                async def stalled() -> None:
                    async with raw_websocket(server.port, path, receive_buffer=4096) as stream:
                        await flood(stream, FLOODS[kind], 300)
                        # A reset (under a stuck send) is an end as good as a close.
                        with contextlib.suppress(trio.BrokenResourceError):
                            await read_to_eof(stream, within=30)
                        ended.append(True)

                nursery.start_soon(stalled)
            await wait_until(lambda: active_connections(server) == 3)
            response = await server.http.delete(f"/api/sessions/{server.session_id}")
            assert response.status_code == 200
            await wait_until(lambda: active_connections(server) == 0)
        assert len(ended) == 3


async def test_shutdown_ends_flooding_stalled_clients_within_its_grace(tmp_path):
    grace = 2.0
    with trio.fail_after(grace + 8):  # the grace plus the bridge's own teardown
        async with trio.open_nursery() as clients:
            async with running_server(tmp_path, shutdown_grace=grace) as server:
                for kind in sorted(FLOODS):
                    path = f"/ws/{server.session_id}/{kind}"

                    async def stalled(path=path, kind=kind) -> None:
                        async with raw_websocket(server.port, path, receive_buffer=4096) as stream:
                            await flood(stream, FLOODS[kind], 300)
                            await trio.sleep_forever()

                    clients.start_soon(stalled)
                await wait_until(lambda: active_connections(server) == len(FLOODS))
            clients.cancel_scope.cancel()


async def test_a_viewer_that_breaks_mid_frame_frees_its_slot(tmp_path):
    async with running_server(tmp_path, max_connections_per_session=1) as server:
        async with raw_websocket(server.port, f"/ws/{server.session_id}/control") as stream:
            await stream.send_all(b"\x81\xfe\x10\x00")  # the head of a 4 KB frame, then nothing
            await wait_until(lambda: active_connections(server) == 1)
        await wait_until(lambda: active_connections(server) == 0)
        async with open_ws(server.ws_url(server.session_id, "video")) as ws:
            await ws.get_message()
            await ws.aclose()
            await close_of(ws)
