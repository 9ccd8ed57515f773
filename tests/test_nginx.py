"""Behind a real nginx with the deployment's proxy settings: proxied requests and
viewers leave no descriptor behind, every viewer gets every frame, and forwarded
client addresses count only from a trusted proxy."""

from __future__ import annotations

import httpx
import trio
import trio_websocket
from conftest import running_server
from nginx import running_nginx
from raw import (
    close_code,
    is_listening,
    open_descriptors,
    raw_websocket,
    read_frame,
    wait_until,
    ws_frame,
)

from bridge_actors.wire import parse_binary_header

VIEWERS = 200
FRAMES = 12


async def test_proxied_requests_leave_the_descriptor_count_at_its_baseline(tmp_path):
    async with running_server(tmp_path / "state") as server:
        with running_nginx(tmp_path / "nginx", server.port) as port:
            await wait_until(lambda: is_listening(port))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as proxied:
                assert (await proxied.get("/api/sessions/configurations")).status_code == 200
                baseline = open_descriptors()
                remaining = iter(range(1000))

                async def client() -> None:
                    for _ in remaining:
                        response = await proxied.get("/api/sessions/configurations")
                        assert response.status_code == 200

                async with trio.open_nursery() as nursery:
                    for _ in range(8):
                        nursery.start_soon(client)
            # nginx speaks HTTP/1.0 with "Connection: close" upstream: each of those 1,000
            # connections must have been closed by the server itself.
            await wait_until(lambda: open_descriptors() <= baseline)


async def test_proxied_viewers_get_every_frame_and_leave_nothing_behind(tmp_path):
    async with running_server(
        tmp_path / "state", fps=5, max_connections_per_session=VIEWERS + 10
    ) as server:
        with running_nginx(tmp_path / "nginx", server.port) as port:
            await wait_until(lambda: is_listening(port))
            baseline = open_descriptors()
            url = f"ws://127.0.0.1:{port}/ws/{server.session_id}/video?format=binary"
            received: list[list[int]] = []
            all_connected = trio.Event()

            async def viewer() -> None:
                seqs: list[int] = []
                received.append(seqs)
                async with trio_websocket.open_websocket_url(url) as ws:
                    if len(received) == VIEWERS:
                        all_connected.set()
                    await all_connected.wait()
                    while len(seqs) < FRAMES:
                        seqs.append(parse_binary_header(await ws.get_message())["seq"])

            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    for _ in range(VIEWERS):
                        nursery.start_soon(viewer)
            for seqs in received:
                # After the first, no frame the capture produced is missing for anyone.
                assert seqs == list(range(seqs[0], seqs[0] + FRAMES)), seqs
            await wait_until(lambda: server.bridge.limiter.statistics().active_connections == 0)
            await wait_until(lambda: open_descriptors() <= baseline)


async def _admitted(port: int, path: str, source: str, headers: str = "") -> bool:
    """Whether a control socket from ``source`` is admitted (refusals close with a code)."""
    async with raw_websocket(port, path, source=source, headers=headers) as stream:
        await stream.send_all(ws_frame(b'{"t":"tap","x":1,"y":1,"id":1}'))
        buffered = bytearray()
        opcode, payload = await read_frame(stream, buffered)
        if opcode == 0x8:
            assert int.from_bytes(payload[:2], "big") == 4029, payload
            return False
        assert b'"ack"' in payload
        return True


async def test_forwarded_addresses_count_only_from_a_trusted_proxy(tmp_path):
    limits = {"max_connections_per_minute": 2}
    async with running_server(
        tmp_path / "trusted", trusted_proxies=("127.0.0.1",), **limits
    ) as server:
        with running_nginx(tmp_path / "nginx", server.port) as port:
            await wait_until(lambda: is_listening(port))
            path = f"/ws/{server.session_id}/control"
            # Each client address behind the proxy has its own allowance...
            assert [await _admitted(port, path, "127.0.0.2") for _ in range(3)] == [
                True,
                True,
                False,
            ]
            assert await _admitted(port, path, "127.0.0.3")
            # ...and a forged X-Forwarded-For does not buy another one.
            forged = "X-Forwarded-For: 6.6.6.6\r\n"
            assert not await _admitted(port, path, "127.0.0.2", forged)
            # Straight to the server, not through the trusted proxy, the header is ignored.
            assert await _admitted(server.port, path, "127.0.0.4", forged)
            assert await _admitted(server.port, path, "127.0.0.4", "X-Forwarded-For: 7.7.7.7\r\n")
            assert not await _admitted(server.port, path, "127.0.0.4", "X-Real-IP: 8.8.8.8\r\n")


async def test_without_trusted_proxies_everyone_behind_the_proxy_is_one_client(tmp_path):
    async with running_server(tmp_path / "untrusted", max_connections_per_minute=2) as server:
        with running_nginx(tmp_path / "nginx", server.port) as port:
            await wait_until(lambda: is_listening(port))
            path = f"/ws/{server.session_id}/control"
            assert await _admitted(port, path, "127.0.0.2")
            assert await _admitted(port, path, "127.0.0.3")
            assert not await _admitted(port, path, "127.0.0.4")  # all counted as nginx's address
            stream_code = None
            async with raw_websocket(port, path, source="127.0.0.5") as stream:
                stream_code, _ = await close_code(stream)
            assert stream_code == 4029
