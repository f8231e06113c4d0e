-- Invariant: release is idempotent; the session also leaves the reaped set (it ended normally)
-- and stops counting under its model.
-- KEYS: leases, reaped, of, counts.  ARGV: session_id
redis.call('SREM', KEYS[2], ARGV[1])
drop_model(KEYS[3], KEYS[4], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
