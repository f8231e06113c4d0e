-- Translation calls (0016): a booking whose budget settle is not confirmed yet. The replica that
-- books a call sets it with the booking and clears it once the reservation is settled to the
-- booked cost; if that replica died in between, any replica's sweep settles it once the call's
-- claim has run out (docs/translation.md#webrtc-calls). The settle is idempotent per reservation.
ALTER TABLE translation_calls ADD COLUMN settle_pending boolean NOT NULL DEFAULT false;
CREATE INDEX translation_calls_settle_pending ON translation_calls (call_id) WHERE settle_pending;
