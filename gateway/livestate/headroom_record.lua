-- Invariant: the stored snapshot is the most recent one any replica saw (older ones are ignored).
-- KEYS: headroom.  ARGV: tokens_limit, tokens_remaining, reset_seconds, observed_at, ttl
local seen = redis.call('HGET', KEYS[1], 'observed_at')
if seen and tonumber(seen) > tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], 'limit', ARGV[1], 'remaining', ARGV[2], 'reset_seconds', ARGV[3], 'observed_at', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
