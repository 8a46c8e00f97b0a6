-- Make scheduled job ARGV[3] (delayed, or waiting out a retry backoff) ready now. Returns 1, or 0
-- if it is not scheduled. KEYS[8]: its record.
local id = ARGV[3]
declare(8, {id})
if redis.call('ZREM', KEYS[2], id) == 0 then return 0 end
if redis.call('EXISTS', job_key(id)) == 0 then return 0 end
make_ready(id, false)
wake()
return 1
