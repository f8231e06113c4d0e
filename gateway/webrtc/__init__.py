"""WebRTC: client secrets, the SDP broker, call control and the sideband that meters calls.

`routes` (thin handlers) parse with `access` (who is calling) and `bodies`/`multipart`/`sdp`
(what was sent), then run one flow: `client_secrets`, `broker` (place and hang up calls) or
`attach`. Flows police and admit through `sessions` and talk to upstream through
`upstream_http`; `context` holds what they share in one process. `calls_store` records
calls, `sideband` meters and polices them.
"""
