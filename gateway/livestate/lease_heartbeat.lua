-- Invariant: a heartbeat only renews leases that still exist; it never resurrects a released or
-- reaped lease. Returns the session ids whose lease is gone (the caller should close them).
-- The model hashes live as long as the leases they describe.
-- KEYS: leases, of, counts.  ARGV: expires_at, key_ttl, session_id...
local lost = {}
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
if #lost < #ARGV - 2 then
  extend_ttl(KEYS[1], ARGV[2])
  if redis.call('EXISTS', KEYS[2]) == 1 then extend_ttl(KEYS[2], ARGV[2]) end
  if redis.call('EXISTS', KEYS[3]) == 1 then extend_ttl(KEYS[3], ARGV[2]) end
end
return lost
