-- Invariant: the count never includes an expired lease (they are reaped first).
-- KEYS: leases, reaped, of, counts.  ARGV: now, reaped_ttl, model ('' = the tenant's count only)
-- Returns the tenant's live leases, or {tenant's, the model's} when a model is named.
reap_leases(KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[2], KEYS[3], KEYS[4])
if ARGV[3] == nil or ARGV[3] == '' then return redis.call('ZCARD', KEYS[1]) end
return {redis.call('ZCARD', KEYS[1]), tonumber(redis.call('HGET', KEYS[4], ARGV[3]) or '0')}
