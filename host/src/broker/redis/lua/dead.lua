-- Take jobs out of the dead set: ARGV[3] = 'retry' (back to ready with a fresh set of attempts)
-- or 'delete'. Which jobs:
--   named:  ARGV[4] = 0, ARGV[5..] = their ids, KEYS[8..] their records
--   oldest: ARGV[4] = at most this many, ARGV[5] = cutoff ms (those that died at or before it)
-- Returns how many it took (named jobs that are not dead are skipped).
local retry = ARGV[3] == 'retry'
local ids
if tonumber(ARGV[4]) == 0 then
  ids = ids_in_argv(5, 1)
  declare(8, ids)
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[5], 'LIMIT', 0, tonumber(ARGV[4]))
end
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
