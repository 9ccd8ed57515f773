"""Frames written straight to a viewer's socket: the bytes, what is left over, and its order."""

from __future__ import annotations

import random
import socket
from types import SimpleNamespace

import pytest
import trio
from hypercorn.config import Config
from hypercorn.events import RawData
from hypercorn.protocol.ws_stream import ASGIWebsocketState
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection as WebSocketConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from bridge_actors._server.connection import Connection
from bridge_actors._server.frame_writer import TEXT, WrittenAtOnce, websocket_frame
from bridge_actors._server.ws import SocketSink

BIG = 4 << 20  # more than any socket buffer takes at once


def client_events(data: bytes) -> list:
    """What a WebSocket client makes of ``data`` from its server."""
    client = WebSocketConnection(ConnectionType.CLIENT)
    client.receive_data(data)
    return list(client.events())


@given(size=st.one_of(st.integers(0, 300), st.sampled_from([125, 126, 65535, 65536, 70_000])))
def test_a_frame_is_one_whole_message_to_a_client(size):
    payload = random.Random(size).randbytes(size)
    [binary] = client_events(websocket_frame(payload))
    assert isinstance(binary, BytesMessage)
    assert binary.data == payload and binary.message_finished
    text = payload.hex()[:size]
    [message] = client_events(websocket_frame(text.encode(), TEXT))
    assert isinstance(message, TextMessage) and message.data == text


def test_only_data_frames_are_made():
    with pytest.raises(ValueError, match="opcode 0x8"):
        websocket_frame(b"", 0x8)


def websocket_stream(open: bool = True) -> SimpleNamespace:
    """The three things of Hypercorn's WSStream that say whether data may be sent."""
    return SimpleNamespace(
        state=ASGIWebsocketState.CONNECTED if open else ASGIWebsocketState.CLOSED,
        closed=False,
        connection=SimpleNamespace(state=ConnectionState.OPEN),
    )


def connection_pair(send_buffer: int = 8192) -> tuple[Connection, socket.socket]:
    """A Connection over one end of a socket pair; the other end is the client."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, send_buffer)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    connection = Connection(None, Config(), None, None, stream, header_timeout=5, body_timeout=5)
    return connection, theirs


async def read_exactly(sock: socket.socket, size: int) -> bytes:
    client = trio.socket.from_stdlib_socket(sock)
    data = bytearray()
    with trio.fail_after(10):
        while len(data) < size:
            chunk = await client.recv(1 << 16)
            assert chunk, "closed early"
            data += chunk
    return bytes(data)


async def test_a_frame_the_socket_takes_whole_is_written_at_once():
    connection, client = connection_pair()
    writer = connection.frame_writer_for(websocket_stream())
    frame = websocket_frame(b"x" * 1000)
    assert writer.ready() and writer.write_now(frame)
    assert writer.ready()
    assert await read_exactly(client, len(frame)) == frame
    assert writer.statistics().written_now == 1


async def test_the_rest_of_a_frame_goes_before_the_connections_next_send():
    connection, client = connection_pair()
    writer = connection.frame_writer_for(websocket_stream())
    payload = random.Random(1).randbytes(BIG)
    assert not writer.write_now(websocket_frame(payload))
    stats = writer.statistics()
    assert stats.partial == 1 and 0 < stats.backlog_bytes < BIG
    assert not writer.ready()
    close = b"\x88\x02\x03\xe8"  # what Hypercorn sends when the app closes: code 1000
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.protocol_send, RawData(close))
        data = await read_exactly(client, len(websocket_frame(payload)) + len(close))
    message, closing = client_events(data)
    assert isinstance(message, BytesMessage) and message.data == payload
    assert isinstance(closing, CloseConnection) and closing.code == 1000
    assert writer.ready()


async def test_the_viewer_finishes_what_was_left_and_may_write_at_once_again():
    connection, client = connection_pair()
    writer = connection.frame_writer_for(websocket_stream())
    first, second = websocket_frame(b"a" * BIG), websocket_frame(b"b" * 10)
    assert not writer.write_now(first)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.finish)
        assert await read_exactly(client, len(first)) == first
    assert writer.ready() and writer.write_now(second)
    assert await read_exactly(client, len(second)) == second
    stats = writer.statistics()
    assert (stats.written_now, stats.partial, stats.finished) == (1, 1, 1)


async def test_nothing_is_written_at_once_while_the_connection_sends_or_is_closed():
    connection, _client = connection_pair()
    writer = connection.frame_writer_for(websocket_stream())
    async with connection.send_lock:
        assert not writer.ready()
    assert writer.ready()
    closed = connection.frame_writer_for(websocket_stream(open=False))
    assert not closed.ready()


async def test_a_client_that_left_breaks_the_writer_and_nothing_is_left_to_finish():
    connection, client = connection_pair()
    writer = connection.frame_writer_for(websocket_stream())
    client.close()
    assert writer.write_now(websocket_frame(b"late"))
    assert writer.statistics().broken and not writer.ready()
    await writer.finish()  # nothing to do, and it does not raise


def socket_sink(writer) -> tuple[SocketSink, list[tuple[float, int]], WrittenAtOnce]:
    """A SocketSink framing bytes items; the list gets what its clock was told was sent."""
    sent: list[tuple[float, int]] = []
    clock = SimpleNamespace(
        sent=lambda captured_at, input_seq: sent.append((captured_at, input_seq))
    )
    totals = WrittenAtOnce()
    return SocketSink(writer, websocket_frame, clock, totals), sent, totals


def item(payload: bytes, seq: int) -> bytes:
    class Sent(bytes):
        captured_at = float(seq)
        input_seq = seq

    return Sent(payload)


async def test_a_socket_sink_counts_a_message_as_sent_once_the_socket_has_all_of_it():
    """The delivery clock of a message written in part runs until its rest is sent."""
    connection, client = connection_pair()
    sink, sent, totals = socket_sink(connection.frame_writer_for(websocket_stream()))
    assert sink.put(item(b"small", 1)) and sent == [(1.0, 1)]
    await read_exactly(client, len(websocket_frame(b"small")))
    big = b"b" * BIG
    assert not sink.put(item(big, 2)) and sent == [(1.0, 1)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.finish)
        assert await read_exactly(client, len(websocket_frame(big))) == websocket_frame(big)
    assert sent == [(1.0, 1), (2.0, 2)]
    assert (totals.whole, totals.in_part) == (1, 1)


async def test_a_socket_sink_whose_client_left_counts_nothing():
    connection, client = connection_pair()
    sink, sent, totals = socket_sink(connection.frame_writer_for(websocket_stream()))
    client.close()
    assert sink.put(item(b"late", 1))
    await sink.finish()
    assert sent == [] and (totals.whole, totals.in_part) == (0, 0)
