-- Move dead job ARGV[3] back to ready with a fresh set of attempts. Returns 1, or 0 if not dead.
local id = ARGV[3]
if redis.call('ZREM', KEYS[4], id) == 0 then return 0 end
redis.call('HSET', ARGV[1] .. id, 'attempts', 0)
redis.call('HDEL', ARGV[1] .. id, 'fin')
make_ready(id, false)
wake()
return 1
