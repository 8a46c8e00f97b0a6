-- Delete dead job ARGV[3]. Returns 1, or 0 if it is not dead.
local id = ARGV[3]
if redis.call('ZREM', KEYS[4], id) == 0 then return 0 end
redis.call('DEL', ARGV[1] .. id)
return 1
