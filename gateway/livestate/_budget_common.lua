-- Budget prelude. KEYS (same order in every budget script):
--   1 resv (HASH id -> amount)   2 resv_exp (ZSET id -> expiry)   3 reserved (STRING total)
--   4 settled (ZSET id -> time)  5 since (STRING)                 6 day window (HASH)   7 month window (HASH)
-- ARGV 1..7: now, day_start, month_start, day_ttl, month_ttl, since_ttl, reservation key ttl.
-- `since` is the time from which every settle is known to be in Redis; a window whose start is
-- at or after it is complete ("known"); an older one needs a rebuild from the Postgres ledger.

local function release_reserved(reserved, amount)
  if amount <= 0 then return end
  if redis.call('DECRBY', reserved, int(amount)) <= 0 then redis.call('DEL', reserved) end
end

local function reap_reservations(resv, resv_exp, reserved, now)
  local ids = redis.call('ZRANGEBYSCORE', resv_exp, '-inf', now)
  if #ids == 0 then return 0 end
  local freed = 0
  for _, id in ipairs(ids) do
    local amount = redis.call('HGET', resv, id)
    if amount then
      freed = freed + tonumber(amount)
      redis.call('HDEL', resv, id)
    end
  end
  redis.call('ZREMRANGEBYSCORE', resv_exp, '-inf', now)
  release_reserved(reserved, freed)
  return #ids
end

local function touch_since(key, now_text, ttl)
  local value = redis.call('GET', key)
  if not value then
    value = now_text
    redis.call('SET', key, value)
  end
  redis.call('EXPIRE', key, ttl)
  return value
end

local function load_window(key, since, start, ttl)
  local known = redis.call('HEXISTS', key, 'known') == 1
  if not known and tonumber(since) <= start then
    redis.call('HSET', key, 'known', '1')
    known = true
  end
  if redis.call('EXISTS', key) == 1 then redis.call('EXPIRE', key, ttl) end
  return tonumber(redis.call('HGET', key, 'spent') or '0'), known
end

local function load_state()
  local s = {now = tonumber(ARGV[1])}
  s.since = touch_since(KEYS[5], ARGV[1], ARGV[6])
  reap_reservations(KEYS[1], KEYS[2], KEYS[3], s.now)
  s.spent_day, s.known_day = load_window(KEYS[6], s.since, tonumber(ARGV[2]), ARGV[4])
  s.spent_month, s.known_month = load_window(KEYS[7], s.since, tonumber(ARGV[3]), ARGV[5])
  s.reserved = tonumber(redis.call('GET', KEYS[3]) or '0')
  return s
end

local function reply(s, status, detail)
  return {status, detail, int(s.spent_day), int(s.spent_month), int(s.reserved),
          s.known_day and 1 or 0, s.known_month and 1 or 0, s.since}
end
