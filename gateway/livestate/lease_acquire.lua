-- Invariant: after reaping expired leases, a new lease is added only while ZCARD(leases) < limit,
-- and a lease is counted under a model only while that model's count < model_limit, so a tenant
-- never holds more than `limit` live leases, nor more than `model_limit` of one model, whichever
-- replicas ask. Re-acquiring a held lease renews it (idempotent); naming another model moves it
-- (if that model has room). An empty model leaves the lease's model as it was.
-- KEYS: leases, reaped, of, counts.
-- ARGV: session_id, limit (-1 = none), now, expires_at, key_ttl, reaped_ttl, model ('' = none),
--       model_limit (-1 = none)
-- Returns {granted, active leases, active leases of the model, refused_by ('', 'tenant', 'model')}.
local now = tonumber(ARGV[3])
reap_leases(KEYS[1], KEYS[2], now, ARGV[6], KEYS[3], KEYS[4])
local session, model = ARGV[1], ARGV[7]
local limit, model_limit = tonumber(ARGV[2]), tonumber(ARGV[8])
local held = redis.call('ZSCORE', KEYS[1], session)
local current = redis.call('HGET', KEYS[3], session)
local moving = model ~= '' and current ~= model
local of_model = 0
if model ~= '' then of_model = tonumber(redis.call('HGET', KEYS[4], model) or '0') end
local refused = ''
if not held and limit >= 0 and redis.call('ZCARD', KEYS[1]) >= limit then
  refused = 'tenant'
elseif moving and model_limit >= 0 and of_model >= model_limit then
  refused = 'model'
end
if refused ~= '' then
  return {0, redis.call('ZCARD', KEYS[1]), of_model, refused}
end
redis.call('ZADD', KEYS[1], ARGV[4], session)
redis.call('SREM', KEYS[2], session)
if moving then
  drop_model(KEYS[3], KEYS[4], session)
  redis.call('HSET', KEYS[3], session, model)
  of_model = redis.call('HINCRBY', KEYS[4], model, 1)
end
extend_ttl(KEYS[1], ARGV[5])
extend_ttl(KEYS[3], ARGV[5])
extend_ttl(KEYS[4], ARGV[5])
return {1, redis.call('ZCARD', KEYS[1]), of_model, ''}
