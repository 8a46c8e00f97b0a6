-- Shared by every job-state script (prepended by redis/mod.rs).
-- Job scripts all take the same KEYS:
--   1 ready (zset: ready_score → id)   2 scheduled (zset: due ms → id)
--   3 leased (zset: deadline ms → id)  4 dead (zset: died at ms → id)
--   5 wake (list: at most one token)   6 seq (counter)
--   7 stats (hash: running totals per outcome)
-- and ARGV[1] = job key prefix ("wasmq:{q}:job:"), ARGV[2] = done key prefix ("wasmq:{q}:done:").
-- Every key of a queue shares the hash tag {q}, so one script touches one Redis Cluster slot.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Higher priority first, enqueue order within a priority: 2^44 sequence numbers per level and
-- 201 levels fit exactly in the 53-bit mantissa of a sorted-set score.
local function ready_score(prio, seq)
  return (100 - prio) * 17592186044416 + seq
end

-- Leave one token for a worker blocked in BLPOP; never more than one.
local function wake()
  redis.call('RPUSH', KEYS[5], 1)
  redis.call('LTRIM', KEYS[5], 0, 0)
end

local function make_ready(id, front)
  local jk = ARGV[1] .. id
  local prio = tonumber(redis.call('HGET', jk, 'prio'))
  local seq = 0
  if not front then seq = redis.call('INCR', KEYS[6]) end
  redis.call('ZADD', KEYS[1], ready_score(prio, seq), id)
  redis.call('HSET', jk, 'state', 'ready')
end

-- Wake everyone waiting for this job to become final.
local function notify(id)
  local jk = ARGV[1] .. id
  local n = tonumber(redis.call('HGET', jk, 'waiters') or '0')
  if n > 0 then
    local dk = ARGV[2] .. id
    for _ = 1, n do redis.call('RPUSH', dk, 1) end
    redis.call('EXPIRE', dk, 300)
    redis.call('HDEL', jk, 'waiters')
  end
end

-- Add to the queue's running totals (enqueued, succeeded, failed, retried, dead, cancelled,
-- recovered).
local function count(field, n)
  if n > 0 then redis.call('HINCRBY', KEYS[7], field, n) end
end

-- End a job as cancelled; its record is kept for the result TTL like a success.
local function cancelled(id, ttl)
  local jk = ARGV[1] .. id
  redis.call('HSET', jk, 'state', 'cancelled', 'fin', now_ms())
  redis.call('HDEL', jk, 'cancel')
  redis.call('EXPIRE', jk, ttl)
  notify(id)
end

-- Whether `id` is leased under `token`.
local function holds(id, token)
  local cur = redis.call('HMGET', ARGV[1] .. id, 'state', 'lease')
  return cur[1] == 'leased' and cur[2] == token
end

