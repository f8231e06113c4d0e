-- Invariant: a tenant leaves the index only if nobody touched it since the reaper looked
-- (its score is unchanged); a concurrent acquire re-adds it either way.
-- KEYS: index.  ARGV: tenant_id, score seen by the reaper
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
