-- Take jobs ARGV[4..] (their records KEYS[8..]) out of the dead set: ARGV[3] = 'retry' (back to
-- ready with a fresh set of attempts) or 'delete'. Returns how many it took (jobs that are not
-- dead are skipped).
local retry = ARGV[3] == 'retry'
local ids = ids_in_argv(4, 1)
declare(8, ids)
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[4], id) == 1 then
    n = n + 1
    local jk = job_key(id)
    if retry then
      redis.call('HSET', jk, 'attempts', 0)
      redis.call('HDEL', jk, 'fin')
      make_ready(id, false)
    else
      redis.call('DEL', jk)
    end
  end
end
if retry and n > 0 then wake() end
return n
