-- Invariant: every lease that expired is reported exactly once (the reaped set is drained
-- atomically with the reaping); expired reservations give their amount back to the tenant.
-- KEYS: leases, reaped, resv, resv_exp, reserved, lease models, model counts.  ARGV: now, reaped_ttl
local now = tonumber(ARGV[1])
reap_leases(KEYS[1], KEYS[2], now, ARGV[2], KEYS[6], KEYS[7])
local reaped = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
reap_reservations(KEYS[3], KEYS[4], KEYS[5], now)
return {reaped, redis.call('ZCARD', KEYS[1]), redis.call('HLEN', KEYS[3])}
