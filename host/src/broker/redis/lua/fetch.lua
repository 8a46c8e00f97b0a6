-- Lease up to ARGV[3] ready jobs for ARGV[4] ms to worker ARGV[5], as request ARGV[6], from the
-- candidates ARGV[8..] (ids the client read from the head of the ready set, or the head this
-- script returned to it last time). KEYS: the queue's seven, then the request's key (KEYS[8]),
-- then each candidate's job key (KEYS[9..], in the order of the ids): every key the script
-- touches is declared, so on a Redis Cluster a slot being moved makes the call wait (ASK,
-- TRYAGAIN) instead of finding half its keys gone.
--
-- Returns {leases, more, next}: per job {id, invocation JSON, attempt, lease token}; more = 1
-- when the limits allowed more but other workers had taken candidates (or jobs of higher
-- priority came first); next = the first ARGV[7] ids of the ready set afterwards, the candidates
-- of the client's next fetch (which then needs no read of its own: one round trip per fetch).
-- Nothing while the queue is paused.
--
-- A request is answered once: what it leased is kept (ids, attempts and tokens, for the lease's
-- length) under its id, and the same request sent again — a client that timed out waiting on a
-- stalled Redis resends it — gets those leases back instead of leasing more jobs to nobody.
--
-- Numbers written per job go to Redis as integer strings (`int`): Redis 7.0 formats a Lua
-- number argument with `%.17g`, which costs more than the write itself.
local rk = KEYS[8]
local key_of = {}
for i = 8, #ARGV do key_of[ARGV[i]] = KEYS[i + 1] end
local done = redis.call('GET', rk)
if done then
  local again = {}
  for id, attempt, token in string.gmatch(done, '([^\t\n]+)\t(%d+)\t(%d+)\n') do
    local inv = key_of[id] and redis.call('HGET', key_of[id], 'inv')
    if inv then again[#again + 1] = {id, inv, tonumber(attempt), tonumber(token)} end
  end
  return {again, 0, {}}
end
-- The queue's limits (in its stats hash, for every worker together) cap how many: at most
-- `limit_concurrency` leased at once, at most `limit_rate` fetched per `limit_per_ms` window.
local stats = redis.call('HMGET', KEYS[7], 'paused', 'limit_concurrency', 'limit_rate', 'limit_per_ms', 'rate_window', 'rate_count')
if stats[1] then return {{}, 0, {}} end
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
if want <= 0 or #ARGV < 8 then return {{}, 0, {}} end
-- The head of the ready set, up to `want`, as far as it is among the candidates: a job that
-- came first since they were read (a higher priority) is not declared, so this round stops
-- before it and the next round, on the head returned below, takes it first.
local take = {}
local head = redis.call('ZRANGE', KEYS[1], 0, #ARGV - 8)
for _, id in ipairs(head) do
  if #take == want or not key_of[id] then break end
  take[#take + 1] = id
end
call_spread('ZREM', KEYS[1], take)
local deadline = int(now + tonumber(ARGV[4]))
local started = int(now)
local out = {}
-- One read and one write per job, and one ZADD for all: most of what a job costs Redis is here
-- and in the ack.
local leased, lines = {}, {}
for _, id in ipairs(take) do
  local jk = key_of[id]
  local f = redis.call('HMGET', jk, 'inv', 'attempts', 'lease')
  if f[1] then
    local attempt = tonumber(f[2] or '0') + 1
    local token = tonumber(f[3] or '0') + 1
    local a, t = int(attempt), int(token)
    redis.call('HSET', jk, 'attempts', a, 'lease', t, 'state', 'leased', 'worker', ARGV[5], 'started', started)
    leased[#leased + 1] = deadline
    leased[#leased + 1] = id
    out[#out + 1] = {id, f[1], attempt, token}
    lines[#lines + 1] = id .. '\t' .. a .. '\t' .. t .. '\n'
  end
end
call_spread('ZADD', KEYS[3], leased)
if window then redis.call('HSET', KEYS[7], 'rate_window', int(window), 'rate_count', int(used + #out)) end
if #out > 0 then redis.call('SET', rk, table.concat(lines), 'PX', ARGV[4]) end
local left = redis.call('ZCARD', KEYS[1])
-- More work left: pass the wake-up on to the next blocked worker.
if left > 0 then wake() end
local more = 0
if #take < want and left > 0 then more = 1 end
local upcoming = {}
if left > 0 then upcoming = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[7]) - 1) end
return {out, more, upcoming}
