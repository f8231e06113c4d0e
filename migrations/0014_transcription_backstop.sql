-- A transcription session's audio that no completed transcription billed (appended but never
-- committed, or committed and never transcribed) is booked at the end by its duration, as one
-- row per session with item_id 'backstop' and estimated = true (docs/pricing.md).
ALTER TABLE transcription_usage ADD COLUMN estimated boolean NOT NULL DEFAULT false;
