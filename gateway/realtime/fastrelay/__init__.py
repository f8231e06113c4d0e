"""The frame-splicing relay for `/v1/realtime`: owns the socket after the upgrade (docs/relay.md)."""
