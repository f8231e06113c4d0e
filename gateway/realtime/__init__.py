"""The `/v1/realtime` WebSocket transport: the frame-splicing relay and its upstream."""
