-- Takes room for one call to a destination, atomically: a concurrency slot held under a lease,
-- and a start in the sliding rate window (mirrors broker/memory/egress.rs).
-- KEYS: 1 limit (hash: concurrency, rate, per_ms)  2 slots (zset: token -> lease deadline ms)
--       3 starts (zset: token -> start ms)
-- ARGV: 1 token  2 lease ms  3 guard ms (added to the rate window)  4 poll ms (the wait hint
--       when every slot is held)
-- Returns {1, 0} when acquired, {0, wait_ms} when not.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = redis.call('HMGET', KEYS[1], 'concurrency', 'rate', 'per_ms')
local conc = tonumber(limit[1])
local rate = tonumber(limit[2])
local per = tonumber(limit[3])
local lease = tonumber(ARGV[2])

if conc then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= conc then
    return {0, tonumber(ARGV[4])}
  end
end
if rate and per then
  local window = per + tonumber(ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
  if redis.call('ZCARD', KEYS[3]) >= rate then
    local oldest = tonumber(redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2])
    return {0, oldest + window - now + 1}
  end
  redis.call('ZADD', KEYS[3], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[3], window + 1000)
end
if conc then
  redis.call('ZADD', KEYS[2], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], lease + 1000)
end
return {1, 0}
