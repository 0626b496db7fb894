"""NAT traversal: STUN codec and server engine, NAT behaviour discovery (sans-IO engines).

`stun` is the wire format, `responder` the server side, `discovery` the client that
classifies a NAT (RFC 5780 / RFC 4787); the asyncio glue lives with its process
(`shoal.server.stunlistener`, `shoal.daemon.netcheck`).
"""
