"""Control plane shared by server and daemon: messages, the Noise IK session, WebSocket framing."""
