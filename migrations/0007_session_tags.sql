-- Cost per task (docs/finance.md, "Tags"): the tags a client set on a session with the
-- `X-Voxgate-Tags` header. Every ledger row reaches them through its session_id; the cost
-- rollups (0008) copy them so `group_by=tag` never joins at query time.
-- A JSON object of at most 8 short string values (policies/tags.py bounds them).
ALTER TABLE realtime_sessions ADD COLUMN tags jsonb NOT NULL DEFAULT '{}'::jsonb;
