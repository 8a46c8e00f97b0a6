-- Extend leases to ARGV[3] ms from now: ARGV[4..] = id, token pairs; KEYS[8..] their records.
-- Returns {ids this worker no longer holds, ids whose cancellation was requested}.
declare(8, ids_in_argv(4, 2))
local deadline = now_ms() + tonumber(ARGV[3])
local lost, cancel = {}, {}
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  if holds(id, token) then
    redis.call('ZADD', KEYS[3], 'XX', deadline, id)
    if redis.call('HEXISTS', job_key(id), 'cancel') == 1 then cancel[#cancel + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return {lost, cancel}
