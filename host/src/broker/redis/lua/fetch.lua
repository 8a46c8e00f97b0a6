-- Lease up to ARGV[3] ready jobs for ARGV[4] ms to worker ARGV[5], as request ARGV[6], from the
-- candidates ARGV[8..] (ids the client read from the head of the ready set, or the head this
-- script returned to it last time). KEYS: the queue's seven, then the request's key (KEYS[8]),
-- then each candidate's job key (KEYS[9..], in the order of the ids): every key the script
-- touches is declared, so on a Redis Cluster a slot being moved makes the call wait (ASK,
-- TRYAGAIN) instead of finding half its keys gone.
--
-- Returns one flat array: {more, n, then per leased job its id, invocation JSON, attempt and
-- lease token, then next}. more = 1 when the limits allowed more but other workers had taken
-- candidates (or jobs of higher priority came first); next = up to ARGV[7] ids of the ready set
-- afterwards, the candidates of the client's next fetch (which then needs no read of its own:
-- one round trip per fetch). Nothing while the queue is paused. Flat because Redis turns every
-- table a script returns into a reply by looking up several fields in it: a table per job cost
-- more than the rest of the reply.
--
-- A request is answered once: what it leased is kept (ids, attempts and tokens, for the lease's
-- length) under its id, and the same request sent again — a client that timed out waiting on a
-- stalled Redis resends it — gets those leases back instead of leasing more jobs to nobody.
--
-- Numbers written per job go to Redis as integer strings (`int`): Redis 7.0 formats a Lua
-- number argument with `%.17g`, which costs more than the write itself.
local rk = KEYS[8]
local done = redis.call('GET', rk)
if done then
  local key_of = {}
  for i = 8, #ARGV do key_of[ARGV[i]] = KEYS[i + 1] end
  local again = {0, 0}
  for id, attempt, token in string.gmatch(done, '([^\t\n]+)\t(%d+)\t(%d+)\n') do
    local inv = key_of[id] and redis.call('HGET', key_of[id], 'inv')
    if inv then
      local at = #again
      again[at + 1] = id
      again[at + 2] = inv
      again[at + 3] = tonumber(attempt)
      again[at + 4] = tonumber(token)
      again[2] = again[2] + 1
    end
  end
  return again
end
-- The queue's limits (in its stats hash, for every worker together) cap how many: at most
-- `limit_concurrency` leased at once, at most `limit_rate` fetched per `limit_per_ms` window.
local stats = redis.call('HMGET', KEYS[7], 'paused', 'limit_concurrency', 'limit_rate', 'limit_per_ms', 'rate_window', 'rate_count')
if stats[1] then return {0, 0} end
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
if want <= 0 then return {0, 0} end
-- One read: the head as far as this round may take, and after it the head of the next round.
local head = redis.call('ZRANGE', KEYS[1], 0, want + tonumber(ARGV[7]) - 1)
-- Taken: the head as far as it is among the candidates. Both are in the ready set's order, so
-- one walk matches them (ids compare as interned strings); a job that came first since the
-- candidates were read (a higher priority) is not declared, so this round stops before it and
-- the next, on the head returned below, takes it first.
local take, keys = {}, {}
local c, last = 8, #ARGV
for i = 1, want do
  local id = head[i]
  if not id then break end
  while c <= last and ARGV[c] ~= id do c = c + 1 end
  if c > last then break end
  take[i] = id
  keys[i] = KEYS[c + 1]
  c = c + 1
end
local taken = #take
call_spread('ZREM', KEYS[1], take)
local deadline = int(now + tonumber(ARGV[4]))
local started = int(now)
local out = {0, 0}
-- One read and one write per job, and one ZADD for all: most of what a job costs Redis is here
-- and in the ack.
local leased, lines = {}, {}
for i = 1, taken do
  local id, jk = take[i], keys[i]
  local f = redis.call('HMGET', jk, 'inv', 'attempts', 'lease')
  if f[1] then
    local attempt = tonumber(f[2] or '0') + 1
    local token = tonumber(f[3] or '0') + 1
    local a, t = int(attempt), int(token)
    redis.call('HSET', jk, 'attempts', a, 'lease', t, 'state', 'leased', 'worker', ARGV[5], 'started', started)
    local n = #lines + 1
    leased[2 * n - 1] = deadline
    leased[2 * n] = id
    local at = #out
    out[at + 1] = id
    out[at + 2] = f[1]
    out[at + 3] = attempt
    out[at + 4] = token
    lines[n] = id .. '\t' .. a .. '\t' .. t .. '\n'
  end
end
out[2] = #lines
call_spread('ZADD', KEYS[3], leased)
if window then redis.call('HSET', KEYS[7], 'rate_window', int(window), 'rate_count', int(used + #lines)) end
if #lines > 0 then redis.call('SET', rk, table.concat(lines), 'PX', ARGV[4]) end
-- The range read past what was taken: jobs are left. Pass the wake-up on to the next blocked
-- worker, and return them as the next round's candidates.
if #head > taken then
  wake()
  if taken < want then out[1] = 1 end
  for i = taken + 1, #head do out[#out + 1] = head[i] end
end
return out
