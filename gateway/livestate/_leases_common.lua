-- Lease prelude. A lease is a member of the tenant's `leases` ZSET scored by its expiry.
-- Expired leases (expiry <= now) are removed and remembered in `reaped` until reap_expired
-- drains it, so every reaped session reaches a caller that can end its row in Postgres.
local function reap_leases(leases, reaped, now, reaped_ttl)
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
    call_all('SADD', reaped, expired)
    extend_ttl(reaped, reaped_ttl)
  end
  return #expired
end
