-- Store module bytes: KEYS[1] = module index (hash: hex → info JSON), KEYS[2] = the bytes key;
-- ARGV[1] = hex digest, ARGV[2] = bytes. Idempotent. Returns the info JSON.
local info = redis.call('HGET', KEYS[1], ARGV[1])
if info then return info end
local t = redis.call('TIME')
info = cjson.encode({size = string.len(ARGV[2]), uploaded_at_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)})
redis.call('SET', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], info)
return info
