-- Deletes module bytes (KEYS[1]) that no index lists, if nothing wrote or read them for ARGV[1]
-- seconds (Redis's own idle time, which an upload that began again resets). Returns 1 when the
-- bytes are gone (deleted now or before), 0 when they were touched too recently to tell.
local idle = redis.call('OBJECT', 'IDLETIME', KEYS[1])
if not idle then return 1 end
if idle < tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
