-- Take jobs out of the dead set: ARGV[3] = 'retry' (back to ready with a fresh set of attempts)
-- or 'delete'. Which jobs:
--   named:  ARGV[4] = 0, ARGV[5..] = their ids
--   oldest: ARGV[4] = at most this many, ARGV[5] = cutoff ms (those that died at or before it)
-- Returns how many it took (named jobs that are not dead are skipped).
local retry = ARGV[3] == 'retry'
local ids
if tonumber(ARGV[4]) == 0 then
  ids = {}
  for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[5], 'LIMIT', 0, tonumber(ARGV[4]))
end
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[4], id) == 1 then
    n = n + 1
    local jk = ARGV[1] .. id
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
