"""The HTTP and WebSocket server: Quart-Trio on Hypercorn, over the bridge's services."""
