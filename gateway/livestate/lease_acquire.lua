-- Invariant: after reaping expired leases, a new lease is added only while ZCARD(leases) < limit,
-- so a tenant never holds more than `limit` live leases, whichever replicas ask.
-- Re-acquiring a held lease renews it (idempotent).
-- KEYS: leases, reaped.  ARGV: session_id, limit (-1 = none), now, expires_at, key_ttl, reaped_ttl
local now = tonumber(ARGV[3])
reap_leases(KEYS[1], KEYS[2], now, ARGV[6])
local granted = 0
local limit = tonumber(ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or limit < 0 or redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[1])
  extend_ttl(KEYS[1], ARGV[5])
  granted = 1
end
return {granted, redis.call('ZCARD', KEYS[1])}
