-- Invariant: a reservation is added only if spent + reserved + amount <= limit for every
-- configured window (reserved = all live reservations of the tenant), all in one step, so
-- concurrent reservations can never jointly exceed a limit. Re-reserving a held id is a no-op.
-- A limited window whose counters are not known (Redis lost them) refuses with 'unknown' and
-- holds nothing, forced or not: a limit is never checked against an incomplete spent.
-- A forced reservation (a response upstream already started) is added even when it does not
-- fit (policies.budget.force_reserve); the reply still says whether it fitted.
-- ARGV 8..13: reservation_id, amount, daily_limit (-1 = none), monthly_limit (-1 = none), expires_at,
-- forced (1/0). (ARGV[7], the reservation key ttl, is set by the caller for reserve only)
local s = load_state()
local id = ARGV[8]
if redis.call('HEXISTS', KEYS[1], id) == 1 then return reply(s, 1, 'existing') end
if redis.call('ZSCORE', KEYS[4], id) then return reply(s, 0, 'settled') end
local daily, monthly = tonumber(ARGV[10]), tonumber(ARGV[11])
if (daily >= 0 and not s.known_day) or (monthly >= 0 and not s.known_month) then
  return reply(s, 0, 'unknown')  -- spent is incomplete: the caller rebuilds from the ledger first
end
local amount = tonumber(ARGV[9])
local held = s.reserved + amount
local over = nil
if daily >= 0 and s.spent_day + held > daily then over = 'day'
elseif monthly >= 0 and s.spent_month + held > monthly then over = 'month' end
if over and ARGV[13] ~= '1' then return reply(s, 0, over) end
redis.call('HSET', KEYS[1], id, ARGV[9])
redis.call('ZADD', KEYS[2], ARGV[12], id)
redis.call('INCRBY', KEYS[3], ARGV[9])
for i = 1, 3 do extend_ttl(KEYS[i], ARGV[7]) end
s.reserved = held
if over then return reply(s, 0, over) end
return reply(s, 1, '')
