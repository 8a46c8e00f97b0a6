-- Pause (ARGV[3] = '1') or resume (ARGV[3] = '0') the queue: paused, it accepts jobs but hands
-- none out. Returns 1.
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[7], 'paused', 1)
else
  redis.call('HDEL', KEYS[7], 'paused')
  if redis.call('ZCARD', KEYS[1]) > 0 then wake() end
end
return 1
