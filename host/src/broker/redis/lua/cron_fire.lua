-- Fire cron entry ARGV[3] for its tick ARGV[4] (Unix ms) and move it to ARGV[5], the next tick:
-- only if its next tick is still ARGV[4], so however many workers try, one fires each tick.
-- ARGV[6..9] = the job: id, invocation JSON, priority, max attempts (KEYS[8], KEYS[9] as in
-- cron_put.lua; KEYS[10] the job's record). Returns 1 if this call fired it, 0 if another worker
-- did (or it was removed).
local name = ARGV[3]
if redis.call('HGET', KEYS[9], name) ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[9], name, ARGV[5])
local id = ARGV[6]
declare(10, {id})
local jk = job_key(id)
if redis.call('EXISTS', jk) == 0 then
  new_job(id, ARGV[7], ARGV[8], ARGV[9], 0, now_ms())
  count('enqueued', 1)
  wake()
end
return 1
