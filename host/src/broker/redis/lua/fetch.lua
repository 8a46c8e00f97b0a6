-- Lease up to ARGV[3] ready jobs for ARGV[4] ms to worker ARGV[5].
-- Returns per job {id, invocation JSON, attempt, lease token}; nothing while the queue is paused.
if redis.call('HEXISTS', KEYS[7], 'paused') == 1 then return {} end
local now = now_ms()
local deadline = now + tonumber(ARGV[4])
local popped = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[3]))
local out = {}
for k = 1, #popped, 2 do
  local id = popped[k]
  local jk = ARGV[1] .. id
  local inv = redis.call('HGET', jk, 'inv')
  if inv then
    local attempt = redis.call('HINCRBY', jk, 'attempts', 1)
    local token = redis.call('HINCRBY', jk, 'lease', 1)
    redis.call('HSET', jk, 'state', 'leased', 'worker', ARGV[5], 'started', now)
    redis.call('ZADD', KEYS[3], deadline, id)
    out[#out + 1] = {id, inv, attempt, token}
  end
end
-- More work left: pass the wake-up on to the next blocked worker.
if redis.call('ZCARD', KEYS[1]) > 0 then wake() end
return out
