-- Acknowledge attempts: ARGV[3] = result TTL in seconds, ARGV[4] = how many succeeded (S), then
-- per succeeded job: id, token, report JSON; then per other job: id, token, action (retry | dead
-- | cancelled), retry delay ms, error JSON, report JSON (or '').
-- KEYS[8..10] as in `declare_final`; then per job, in the same order, its record and waiter list.
-- State, result, output and the lease change together. A retry of a job whose cancellation was
-- requested ends it as cancelled instead. Returns {how many acks were stale, batches with jobs that
-- ended}.
--
-- Each job's fields are read once (HMGET) and written once where the outcome allows: the Redis
-- CPU an ack costs is most of what a job costs Redis. Successes, nearly every ack, carry three
-- arguments instead of six: each argument is a string Redis makes twice (the command's and
-- the script's copy).
declare_final(8)
local succeeded = tonumber(ARGV[4])
local others = 5 + 3 * succeeded
local ids = {}
for i = 5, others - 1, 3 do ids[#ids + 1] = ARGV[i] end
for i = others, #ARGV, 6 do ids[#ids + 1] = ARGV[i] end
declare(11, ids, true)
local now = now_ms()
local fin = int(now)
local ttl = tonumber(ARGV[3])
local stale = 0
local n = {succeeded = 0, failed = 0, retried = 0, dead = 0, cancelled = 0}
-- Succeeded jobs are listed in one ZADD after the loop (`fin` and id, alternately); acked jobs
-- leave the leased set in one ZREM.
local listed, unleased = {}, {}

local function ack(id, token, action, delay, err, report)
  local jk = job_key(id)
  local f = redis.call('HMGET', jk, 'state', 'lease', 'cancel', 'held', 'batch', 'waiters')
  if f[1] ~= 'leased' or f[2] ~= token then
    stale = stale + 1
    return
  end
  unleased[#unleased + 1] = id
  if err ~= '' then failed(jk, err); n.failed = n.failed + 1 end
  if action == 'retry' and f[3] then action = 'cancelled' end
  if action == 'cancelled' then
    if report ~= '' then redis.call('HSET', jk, 'report', report) end
    cancelled(id, ttl)
    n.cancelled = n.cancelled + 1
  elseif action == 'retry' then
    if report ~= '' then
      redis.call('HSET', jk, 'state', 'scheduled', 'report', report)
    else
      redis.call('HSET', jk, 'state', 'scheduled')
    end
    redis.call('ZADD', KEYS[2], int(now + tonumber(delay)), id)
    n.retried = n.retried + 1
  else
    local state = action == 'ok' and 'succeeded' or 'dead'
    if report ~= '' then
      redis.call('HSET', jk, 'state', state, 'fin', fin, 'report', report)
    else
      redis.call('HSET', jk, 'state', state, 'fin', fin)
    end
    if f[3] then redis.call('HDEL', jk, 'cancel') end
    if state == 'succeeded' then
      listed[#listed + 1] = fin
      listed[#listed + 1] = id
      -- A sub-job held for its parent is kept until the parent releases it.
      if not f[4] then redis.call('EXPIRE', jk, ARGV[3]) end
      n.succeeded = n.succeeded + 1
    else
      redis.call('ZADD', KEYS[4], fin, id)
      n.dead = n.dead + 1
    end
    notify_known(id, f[5], f[6])
  end
end

for i = 5, others - 1, 3 do ack(ARGV[i], ARGV[i + 1], 'ok', 0, '', ARGV[i + 2]) end
for i = others, #ARGV, 6 do ack(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]) end
call_spread('ZREM', KEYS[3], unleased)
if #listed > 0 then
  local key = final_key('succeeded')
  call_spread('ZADD', key, listed)
  trim_final(key, now, ttl)
end
for field, v in pairs(n) do count(field, v) end
-- A concurrency-limited queue has a free slot now: wake a worker for it.
if redis.call('HEXISTS', KEYS[7], 'limit_concurrency') == 1 and redis.call('ZCARD', KEYS[1]) > 0 then wake() end
return {stale, ENDED}
