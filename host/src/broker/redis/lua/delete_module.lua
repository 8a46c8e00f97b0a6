-- Delete a module: KEYS[1] = module index, KEYS[2] = its bytes key; ARGV[1] = hex digest.
-- Returns 1, or 0 if there was none. (Whether jobs still use it is checked by the caller.)
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
return 1
