-- Invariant: release is idempotent; the session also leaves the reaped set (it ended normally).
-- KEYS: leases, reaped.  ARGV: session_id
redis.call('SREM', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
