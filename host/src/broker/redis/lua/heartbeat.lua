-- Extend leases to ARGV[3] ms from now: ARGV[4..] = id, token pairs.
-- Returns the ids whose lease this worker no longer holds.
local deadline = now_ms() + tonumber(ARGV[3])
local lost = {}
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  if holds(id, token) then
    redis.call('ZADD', KEYS[3], 'XX', deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
