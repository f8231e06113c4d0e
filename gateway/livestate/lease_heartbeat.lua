-- Invariant: a heartbeat only renews leases that still exist; it never resurrects a released or
-- reaped lease. Returns the session ids whose lease is gone (the caller should close them).
-- KEYS: leases.  ARGV: expires_at, key_ttl, session_id...
local lost = {}
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
if #lost < #ARGV - 2 then extend_ttl(KEYS[1], ARGV[2]) end
return lost
