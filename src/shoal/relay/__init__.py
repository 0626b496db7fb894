"""Relays: forward opaque WireGuard ciphertext by destination node key between nodes that
share a network, over UDP and WebSocket (frames, sans-IO engine and client, asyncio service)."""
