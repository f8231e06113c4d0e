-- Invariant: each reservation id is settled at most once within the dedupe horizon: its hold is
-- released (if still there) and `actual` is added to the day and month spent exactly once.
-- ARGV 8..11: reservation_id, actual, dedupe horizon (s), settled key ttl
local s = load_state()
local id = ARGV[8]
if redis.call('ZSCORE', KEYS[4], id) then return reply(s, 0, 'duplicate') end
local held = redis.call('HGET', KEYS[1], id)
if held then
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  release_reserved(KEYS[3], tonumber(held))
  s.reserved = tonumber(redis.call('GET', KEYS[3]) or '0')
end
s.spent_day = redis.call('HINCRBY', KEYS[6], 'spent', ARGV[9])
s.spent_month = redis.call('HINCRBY', KEYS[7], 'spent', ARGV[9])
redis.call('EXPIRE', KEYS[6], ARGV[4])
redis.call('EXPIRE', KEYS[7], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[1], id)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', s.now - tonumber(ARGV[10]))
extend_ttl(KEYS[4], ARGV[11])
return reply(s, 1, '')
