-- Set the queue's limits: ARGV[3] = max jobs leased at once (0: no limit), ARGV[4] = max jobs
-- fetched per window (0: no limit), ARGV[5] = the window in ms, ARGV[6] = max jobs waiting or
-- running (0: no limit). Returns 1.
local function set(field, value)
  if tonumber(value) > 0 then redis.call('HSET', KEYS[7], field, value) else redis.call('HDEL', KEYS[7], field) end
end
set('limit_concurrency', ARGV[3])
set('limit_rate', ARGV[4])
set('limit_per_ms', ARGV[5])
set('limit_size', ARGV[6])
redis.call('HDEL', KEYS[7], 'rate_window', 'rate_count')
if redis.call('ZCARD', KEYS[1]) > 0 then wake() end
return 1
