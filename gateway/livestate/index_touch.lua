-- The cross-tenant index of tenants holding leases or reservations, scored by last activity.
-- KEYS: index.  ARGV: tenant_id, now
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
