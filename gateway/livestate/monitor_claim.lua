-- Invariant: a call has one monitor owner at a time. A claim lapses at its expiry (by `now`);
-- only its owner renews it, and anyone may take it once it lapsed (or was never there).
-- KEYS: monitor.  ARGV: owner, now, expires_at, key_ttl, take (1: take if free; 0: renew only)
local owner = redis.call('HGET', KEYS[1], 'owner')
local live = owner and tonumber(redis.call('HGET', KEYS[1], 'expires_at')) > tonumber(ARGV[2])
if owner == ARGV[1] and live then
  -- ours and live: renew
elseif ARGV[5] == '1' and not (owner and live) then
  redis.call('HSET', KEYS[1], 'owner', ARGV[1])
else
  return 0
end
redis.call('HSET', KEYS[1], 'expires_at', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
