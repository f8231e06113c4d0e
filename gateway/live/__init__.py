"""GPT-Live over WebSocket: `GET /v1/live/sessions` (`route.py`). The session shell it drives
(`gateway.session.live_call.LiveCall`, around `policies.live`'s governor) is shared with the
other Live transports."""
