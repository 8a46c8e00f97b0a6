-- Hand leased jobs back to the front of ready without counting the attempt (graceful shutdown):
-- ARGV[3..] = id, token pairs; KEYS[8..] their records.
declare(8, ids_in_argv(3, 2))
local n = 0
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  if holds(id, token) then
    redis.call('ZREM', KEYS[3], id)
    redis.call('HINCRBY', job_key(id), 'attempts', -1)
    make_ready(id, true)
    n = n + 1
  end
end
if n > 0 then wake() end
return n
