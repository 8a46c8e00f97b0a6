-- Lease up to ARGV[3] ready jobs for ARGV[4] ms to worker ARGV[5], as request ARGV[6], from the
-- candidates ARGV[7..] (ids the client just read from the head of the ready set). KEYS: the
-- queue's seven, then the request's key (KEYS[8]), then each candidate's job key (KEYS[9..], in
-- the order of the ids): every key the script touches is declared, so on a Redis Cluster a slot
-- being moved makes the call wait (ASK, TRYAGAIN) instead of finding half its keys gone.
--
-- Returns {leases, more}: per job {id, invocation JSON, attempt, lease token}, and more = 1 when
-- the limits allowed more but other workers had taken some candidates (the client reads the head
-- again). Nothing while the queue is paused.
--
-- A request is answered once: what it leased is kept (ids, attempts and tokens, for the lease's
-- length) under its id, and the same request sent again — a client that timed out waiting on a
-- stalled Redis resends it — gets those leases back instead of leasing more jobs to nobody.
local rk = KEYS[8]
local key_of = {}
for i = 7, #ARGV do key_of[ARGV[i]] = KEYS[i + 2] end
local done = redis.call('GET', rk)
if done then
  local again = {}
  for id, attempt, token in string.gmatch(done, '([^\t\n]+)\t(%d+)\t(%d+)\n') do
    local inv = key_of[id] and redis.call('HGET', key_of[id], 'inv')
    if inv then again[#again + 1] = {id, inv, tonumber(attempt), tonumber(token)} end
  end
  return {again, 0}
end
-- The queue's limits (in its stats hash, for every worker together) cap how many: at most
-- `limit_concurrency` leased at once, at most `limit_rate` fetched per `limit_per_ms` window.
local stats = redis.call('HMGET', KEYS[7], 'paused', 'limit_concurrency', 'limit_rate', 'limit_per_ms', 'rate_window', 'rate_count')
if stats[1] then return {{}, 0} end
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
if want <= 0 or #ARGV < 7 then return {{}, 0} end
-- The candidates still ready, in their order, up to `want`.
local take = {}
for i = 7, #ARGV, 1000 do
  local last = math.min(i + 999, #ARGV)
  local scores = redis.call('ZMSCORE', KEYS[1], unpack(ARGV, i, last))
  for j = 1, last - i + 1 do
    if scores[j] and #take < want then take[#take + 1] = ARGV[i + j - 1] end
  end
end
call_spread('ZREM', KEYS[1], take)
local deadline = now + tonumber(ARGV[4])
local out = {}
-- One read and one write per job, and one ZADD for all: most of what a job costs Redis is here
-- and in the ack.
local leased = {}
for _, id in ipairs(take) do
  local jk = key_of[id]
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
local left = redis.call('ZCARD', KEYS[1])
-- More work left: pass the wake-up on to the next blocked worker.
if left > 0 then wake() end
local more = 0
if #take < want and left > 0 then more = 1 end
return {out, more}
