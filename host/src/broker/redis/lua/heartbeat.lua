-- Extend leases to ARGV[3] ms from now: ARGV[4..] = id, token pairs.
-- Returns {ids this worker no longer holds, ids whose cancellation was requested}.
local deadline = now_ms() + tonumber(ARGV[3])
local lost, cancel = {}, {}
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  if holds(id, token) then
    redis.call('ZADD', KEYS[3], 'XX', deadline, id)
    if redis.call('HEXISTS', ARGV[1] .. id, 'cancel') == 1 then cancel[#cancel + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return {lost, cancel}
