"""GPT-Live's pure core: policing a session's configuration, metering it by time, and its limits.

A shell (the `/v1/live/sessions` WebSocket in `gateway/live/`, and the WebRTC sideband) builds
one `LiveGovernor` per session and drives it exactly like `policies.governor.SessionGovernor`
(docs/live.md, "How a shell drives the Live governor"):

1. `LiveGovernor(identity, prices, rules, started_at, transport=...)`; for WebRTC call
   `opening(now)` once the create succeeded (it books the 15 s initialisation charge).
2. Every decoded client event -> `on_client_event(event, now)`; audio appends the shell does
   not decode -> `note_client_activity(now)`.
3. Every decoded upstream event -> `on_server_event(event, now)`; content deltas the shell
   does not decode need nothing.
4. At `next_deadline()` (and at least once a second) -> `on_tick(now)`.
5. Answer each `ReserveBudget` with `on_reservation(id, granted, now)`; a tenant's exhausted
   budget -> `on_budget_exhausted(now)`.
6. When the session ends -> `on_end(now)` exactly once (books an estimate when no
   `session.closed` came, releases the open reservation).

Actions are `policies.actions` types plus `BookLiveUsage` (a `LiveUsageRecord` for the
ledger). The parts can be used alone: `config.police_start|police_update|police_overrides`
(clamping) and `meter.LiveMeter` (usage to records); `governor.LiveLimitsConfig` sets the
budget window reserved ahead and the wait for `session.closed` (docs/live.md).
"""
