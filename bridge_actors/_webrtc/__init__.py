"""WebRTC viewers: aiortc peers on a private asyncio thread, fed the shared H.264 packets.

The one package that imports aiortc; the server drives it, the services never see it."""
