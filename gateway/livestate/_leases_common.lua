-- Lease prelude. A lease is a member of the tenant's `leases` ZSET scored by its expiry.
-- Expired leases (expiry <= now) are removed and remembered in `reaped` until reap_expired
-- drains it, so every reaped session reaches a caller that can end its row in Postgres.
-- A lease may name a model (`of`: session -> model); `counts` (model -> n) always equals the
-- number of `of` entries naming each model, and `of` only holds sessions with a live lease.

-- Forget a session's model (if any), keeping `counts` in step.
local function drop_model(of, counts, session)
  local model = redis.call('HGET', of, session)
  if model then
    redis.call('HDEL', of, session)
    if redis.call('HINCRBY', counts, model, -1) <= 0 then redis.call('HDEL', counts, model) end
  end
end

local function reap_leases(leases, reaped, now, reaped_ttl, of, counts)
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
    call_all('SADD', reaped, expired)
    extend_ttl(reaped, reaped_ttl)
    for _, session in ipairs(expired) do drop_model(of, counts, session) end
  end
  -- No live lease at all (the ZSET lapsed on its safety-net TTL): no model can count anything.
  if redis.call('EXISTS', leases) == 0 then redis.call('DEL', of, counts) end
  return #expired
end
