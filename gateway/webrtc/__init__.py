"""WebRTC: client secrets, the SDP broker, call control and the sideband that meters calls.

`routes` (thin handlers) parse with `access` (who is calling) and `bodies`/`multipart`/`sdp`
(what was sent), then run one flow: `client_secrets`, `broker` (place and hang up calls) or
`attach`. Flows police and admit through `sessions` and talk to upstream through
`upstream_http`; `context` holds what they share in one process. `calls_store` records
calls, `sideband` meters and polices them.

GPT-Live over WebRTC is the `live_*` modules: `live_routes` over `live_calls` (create and
fork), `live_controls` (sidebands, forks and controls for the owning tenant only),
`live_config` (the browser's data channel), `live_store` (who owns a `live_…` id) and
`live_sideband` (the sideband voxgate holds to meter and police a session).
"""
