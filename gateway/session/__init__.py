"""One live session, whatever transport carries it: the shell kit every transport uses.

- `assembly`: admitted plan -> governor, effects, `LiveSession` (`admission` admits a WebSocket).
- `live`: `LiveSession`, which decodes what it must and feeds the governor.
- `effects`: executes the governor's typed actions (ledger, shared live state) into a `Verdict`.
- `kit`: the ticker (`ticker`) and late verdicts (`late`) around a `LiveSession`.
- `close_reasons`: how an end shows as a close code, a ledger `end_reason`, a metric label.
- `enforcement`, `leases`: admission against shared state, broadcasts, concurrency leases.
"""
