"""WebRTC: client secrets, the SDP broker, call control and the sideband that meters calls."""
