-- Invariant: the count never includes an expired lease (they are reaped first).
-- KEYS: leases, reaped.  ARGV: now, reaped_ttl
reap_leases(KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[2])
return redis.call('ZCARD', KEYS[1])
