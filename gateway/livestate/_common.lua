-- Prelude shared by every voxgate live-state script (prepended when the script is built).
-- Integers are formatted with %d so large micro-USD amounts never become "1e+15".
local function int(x) return string.format('%d', x) end

-- Safety-net TTL: only ever extended, so keys shared by callers with different TTLs stay put.
local function extend_ttl(key, ttl)
  if redis.call('TTL', key) < tonumber(ttl) then redis.call('EXPIRE', key, ttl) end
end

-- SADD/ZREM etc. over a long list without overflowing Lua's unpack limit.
local function call_all(cmd, key, list)
  for i = 1, #list, 500 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 499, #list)))
  end
end
