"""A WebRTC peer owned from Trio, against a real aiortc client, over loopback."""

from __future__ import annotations

import pytest
import trio
from webrtc_client import Census, Client, encode

from bridge_actors._webrtc.loop import AsyncioThread
from bridge_actors._webrtc.peer import PeerOptions, open_peer

PACKETS = encode(150, gop=30)


class Feed:
    """The encoder feed's surface, replaying prepared packets at 30 fps."""

    def __init__(self) -> None:
        self.keyframe_requests = 0
        self.requested = trio.Event()

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1
        self.requested.set()
        self.requested = trio.Event()

    async def pump(self, peer) -> None:
        for packet in PACKETS:
            peer.send(packet)
            await trio.sleep(1 / 30)


async def test_a_peer_connects_and_its_frames_decode_in_order():
    thread, client, feed = AsyncioThread(), Client(), Feed()
    try:
        with trio.fail_after(20):
            async with open_peer(thread, PeerOptions(), feed.request_keyframe) as peer:
                offer = await client.offer()
                await client.accept(await peer.answer(offer))
                assert await peer.wait_state("connected", "failed") == "connected"
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(feed.pump, peer)
                    numbers = await client.wait_frames(20)
                    nursery.cancel_scope.cancel()
                stats = await peer.statistics()
            assert stats.track.sent >= 20
            assert numbers == sorted(numbers) and numbers[-1] > numbers[0]
            assert feed.keyframe_requests >= 1  # the first read asks for a fresh IDR
    finally:
        await client.close()
        await thread.stop()


async def test_a_pli_from_the_browser_requests_a_keyframe_from_the_encoder():
    thread, client, feed = AsyncioThread(), Client(), Feed()
    try:
        with trio.fail_after(20):
            async with open_peer(thread, PeerOptions(), feed.request_keyframe) as peer:
                await client.accept(await peer.answer(await client.offer()))
                await peer.wait_state("connected")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(feed.pump, peer)
                    await client.wait_frames(5)
                    requested = feed.requested
                    await client.send_pli()
                    await requested.wait()
                    nursery.cancel_scope.cancel()
                assert (await peer.statistics()).keyframe_requests >= 1
    finally:
        await client.close()
        await thread.stop()


async def test_cancelling_the_owner_closes_the_peer_and_stopping_leaves_nothing():
    census = Census()
    thread, client, feed = AsyncioThread(), Client(), Feed()
    with trio.fail_after(20):
        with trio.move_on_after(0) as never:
            never.deadline = float("inf")
            async with open_peer(thread, PeerOptions(), feed.request_keyframe) as peer:
                await client.accept(await peer.answer(await client.offer()))
                await peer.wait_state("connected")
                never.cancel()
                await trio.sleep_forever()
        assert thread.pending_tasks() == 0
        await client.close()
        await thread.stop()
    assert census.new_sockets() == set()
    assert census.new_threads() == []


@pytest.mark.parametrize(
    "sdp",
    ["v=0\r\n", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"],
)
async def test_an_offer_aiortc_cannot_answer_is_bad_input(sdp):
    from bridge_actors import BadInput

    thread, feed = AsyncioThread(), Feed()
    try:
        with trio.fail_after(10):
            async with open_peer(thread, PeerOptions(), feed.request_keyframe) as peer:
                with pytest.raises(BadInput):
                    await peer.answer(sdp)
    finally:
        await thread.stop()
