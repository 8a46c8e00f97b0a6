-- Accept jobs: ARGV[3] = count, then per job: id, invocation JSON, priority, max attempts,
-- run_at ms (0 = now). A job whose id exists is left alone (idempotency).
-- Returns per job 1 (created) or 0 (existed).
local now = now_ms()
local out = {}
local woke = false
local i = 4
for j = 1, tonumber(ARGV[3]) do
  local id, inv, prio, max, run_at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  i = i + 5
  local jk = ARGV[1] .. id
  if redis.call('EXISTS', jk) == 1 then
    out[j] = 0
  else
    redis.call('HSET', jk, 'inv', inv, 'attempts', 0, 'max', max, 'prio', prio, 'enq', now, 'lease', 0)
    if run_at > now then
      redis.call('HSET', jk, 'state', 'scheduled')
      redis.call('ZADD', KEYS[2], run_at, id)
    else
      make_ready(id, false)
      woke = true
    end
    out[j] = 1
  end
end
if woke then wake() end
return out
