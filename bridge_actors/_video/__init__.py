"""Encoded video: H.264 bitstream parsing and the per-device encoder service."""
