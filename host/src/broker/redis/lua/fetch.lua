-- Lease up to ARGV[3] ready jobs for ARGV[4] ms to worker ARGV[5], as request ARGV[6].
-- Returns per job {id, invocation JSON, attempt, lease token}; nothing while the queue is paused.
-- A request is answered once: what it leased is kept (ids, attempts and tokens, for the lease's
-- length) under its id, and the same request sent again — a client that timed out waiting on a
-- stalled Redis resends it — gets those leases back instead of leasing more jobs to nobody.
local rk = string.sub(ARGV[1], 1, -5) .. 'fetch:' .. ARGV[6]
local done = redis.call('GET', rk)
if done then
  local again = {}
  for id, attempt, token in string.gmatch(done, '([^\t\n]+)\t(%d+)\t(%d+)\n') do
    local inv = redis.call('HGET', ARGV[1] .. id, 'inv')
    if inv then again[#again + 1] = {id, inv, tonumber(attempt), tonumber(token)} end
  end
  return again
end
-- The queue's limits (in its stats hash, for every worker together) cap how many: at most
-- `limit_concurrency` leased at once, at most `limit_rate` fetched per `limit_per_ms` window.
local stats = redis.call('HMGET', KEYS[7], 'paused', 'limit_concurrency', 'limit_rate', 'limit_per_ms', 'rate_window', 'rate_count')
if stats[1] then return {} end
local now = now_ms()
local want = tonumber(ARGV[3])
if stats[2] then
  want = math.min(want, tonumber(stats[2]) - redis.call('ZCARD', KEYS[3]))
end
local window, used
if stats[3] then
  window = math.floor(now / tonumber(stats[4]))
  used = 0
  if tonumber(stats[5]) == window then used = tonumber(stats[6]) end
  want = math.min(want, tonumber(stats[3]) - used)
end
if want <= 0 then return {} end
local deadline = now + tonumber(ARGV[4])
local popped = redis.call('ZPOPMIN', KEYS[1], want)
local out = {}
-- One read and one write per job, and one ZADD for all: most of what a job costs Redis is here
-- and in the ack.
local leased = {}
for k = 1, #popped, 2 do
  local id = popped[k]
  local jk = ARGV[1] .. id
  local f = redis.call('HMGET', jk, 'inv', 'attempts', 'lease')
  if f[1] then
    local attempt = tonumber(f[2] or '0') + 1
    local token = tonumber(f[3] or '0') + 1
    redis.call('HSET', jk, 'attempts', attempt, 'lease', token, 'state', 'leased', 'worker', ARGV[5], 'started', now)
    leased[#leased + 1] = deadline
    leased[#leased + 1] = id
    out[#out + 1] = {id, f[1], attempt, token}
  end
end
call_spread('ZADD', KEYS[3], leased)
if window then redis.call('HSET', KEYS[7], 'rate_window', window, 'rate_count', used + #out) end
if #out > 0 then
  local lines = {}
  for _, row in ipairs(out) do lines[#lines + 1] = row[1] .. '\t' .. row[3] .. '\t' .. row[4] .. '\n' end
  redis.call('SET', rk, table.concat(lines), 'PX', ARGV[4])
end
-- More work left: pass the wake-up on to the next blocked worker.
if redis.call('ZCARD', KEYS[1]) > 0 then wake() end
return out
