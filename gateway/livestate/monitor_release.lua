-- Invariant: only the owner releases a claim; releasing twice is harmless.
-- KEYS: monitor.  ARGV: owner
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
