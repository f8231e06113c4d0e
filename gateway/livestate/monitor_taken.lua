-- Whether another replica holds a live claim (a drained replica watches for its successor).
-- KEYS: monitor.  ARGV: owner, now
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] and tonumber(redis.call('HGET', KEYS[1], 'expires_at')) > tonumber(ARGV[2]) then
  return 1
end
return 0
