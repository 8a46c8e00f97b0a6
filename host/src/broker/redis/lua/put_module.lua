-- List stored module bytes in the index: KEYS[1] = module index (hash: hex → info JSON), KEYS[2]
-- = module operations under way; ARGV[1] = hex digest, ARGV[2] = size in bytes, ARGV[3] = this
-- upload's entry in KEYS[2]. The bytes were stored first (under their own hash tag, so in another
-- slot), so a listed module always has its bytes; listed, they are no longer an upload under way
-- (the entry is removed if it is still this upload's). Idempotent: returns the info JSON, the
-- first upload's.
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[3] then redis.call('HDEL', KEYS[2], ARGV[1]) end
local info = redis.call('HGET', KEYS[1], ARGV[1])
if info then return info end
local t = redis.call('TIME')
info = cjson.encode({size = tonumber(ARGV[2]), uploaded_at_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)})
redis.call('HSET', KEYS[1], ARGV[1], info)
return info
