-- Invariant: a window's history from Postgres is added at most once (the `known` flag is set
-- with it) and only on top of what Redis counted since `since`, so a concurrent settle is never
-- overwritten. If `since` changed (Redis flushed again), nothing is written: the caller retries.
-- KEYS: since, day window, month window.  ARGV: since seen, day_sum, month_sum, day_ttl, month_ttl
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, 3 do
  if redis.call('HEXISTS', KEYS[i], 'known') == 0 then
    redis.call('HINCRBY', KEYS[i], 'spent', ARGV[i])
    redis.call('HSET', KEYS[i], 'known', '1')
  end
  redis.call('EXPIRE', KEYS[i], ARGV[i + 2])
end
return 1
