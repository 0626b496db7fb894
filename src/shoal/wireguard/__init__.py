"""The WireGuard protocol engine (sans-IO): handshake, sessions, timers, routing.

Nothing in this package opens a socket, touches asyncio or reads the clock: bytes and
`now` (seconds, float, monotonic) go in; datagrams, packets for the interface, one next
deadline and events come out. The interface side lives in `shoal.tun`, the UDP side in
`shoal.udp`.
"""
