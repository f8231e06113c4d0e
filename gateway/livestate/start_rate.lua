-- Invariant: at most `limit` starts are recorded in any window (now - window, now]; a refusal
-- says when the oldest start leaves the window (retry_after).
-- KEYS: starts.  ARGV: now, window_s, limit, member
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
  redis.call('EXPIRE', KEYS[1], math.ceil(window) + 60)
  return {1, '0'}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = window
if #oldest == 2 then wait = tonumber(oldest[2]) + window - now end
return {0, tostring(math.max(wait, 0))}
