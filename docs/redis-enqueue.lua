-- Shared by every job-state script (prepended by redis/mod.rs).
-- Job scripts all take the same KEYS:
--   1 ready (zset: ready_score → id)   2 scheduled (zset: due ms → id)
--   3 leased (zset: deadline ms → id)  4 dead (zset: died at ms → id)
--   5 wake (list: at most one token)   6 seq (counter)
--   7 stats (hash: running totals per outcome)
-- and ARGV[1] = job key prefix ("wasmq:{q}:job:"), ARGV[2] = done key prefix ("wasmq:{q}:done:").
-- Every key of a queue shares the hash tag {q}, so one script touches one Redis Cluster slot.
--
-- The job records, waiter lists and listings a script touches are declared in its KEYS too, after
-- the fixed ones (each script says which), and looked up here by job id: a Redis Cluster slot in
-- migration can then hold the call back until the keys are together again, which it cannot do
-- for a key built inside the script. Built from the ARGV prefixes only where a script does not
-- declare them (direct writers that pass only the seven queue keys to enqueue).
local JOB, DONE, FINAL = {}, {}, {}
-- The checks of a direct writer's enqueue (set by enqueue_checks.lua; nil in the broker's own).
local check_jobs
local UNDECLARED = false
local function job_key(id)
  local k = JOB[id] or (UNDECLARED and (ARGV[1] .. id))
  if not k then error('wasmq: the record of job `' .. id .. '` is not declared in KEYS') end
  return k
end
local function done_key(id)
  local k = DONE[id]
  if not k then error('wasmq: the waiter list of job `' .. id .. '` is not declared in KEYS') end
  return k
end

-- KEYS[first..] are the job keys of `ids` in order; with `done`, each followed by its waiter list.
-- Returns the index of the next key.
local function declare(first, ids, done)
  local k = first
  for _, id in ipairs(ids) do
    JOB[id] = KEYS[k]
    k = k + 1
    if done then
      DONE[id] = KEYS[k]
      k = k + 1
    end
  end
  return k
end

-- KEYS[at] and KEYS[at + 1] are the queue's listings of succeeded and cancelled jobs, KEYS[at + 2]
-- its unsettled batch ends (hash: batch id -> jobs ended): what a script that ends jobs touches.
local function declare_final(at)
  FINAL.succeeded = KEYS[at]
  FINAL.cancelled = KEYS[at + 1]
  FINAL.batch_ends = KEYS[at + 2]
end

-- The ids at ARGV[first], ARGV[first + step], … (the id of each group of `step` arguments).
local function ids_in_argv(first, step)
  local ids = {}
  for i = first, #ARGV, step do ids[#ids + 1] = ARGV[i] end
  return ids
end

-- Failures kept per job record (MAX_ERRORS in broker/mod.rs), and succeeded or cancelled jobs
-- listed per queue (MAX_FINISHED_LISTED).
local MAX_ERRORS = 25
local MAX_FINISHED = 10000

-- The longest invocation JSON accepted: the hard ceiling on args (MAX_ARGS_BYTES, 1 MiB) plus
-- room for the other fields (INVOCATION_OVERHEAD_BYTES, 4 KiB), both in job/limits.rs.
local MAX_INVOCATION_BYTES = 1052672

-- `x`, an integer, as the string Redis is sent: Redis 7.0 formats a Lua number argument with
-- `%.17g`, which costs more than a small write itself (and `..` on a number is `%.14g`).
local function int(x)
  return string.format('%d', x)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Higher priority first, enqueue order within a priority: 2^44 sequence numbers per level and
-- 201 levels fit exactly in the 53-bit mantissa of a sorted-set score.
local function ready_score(prio, seq)
  return (100 - prio) * 17592186044416 + seq
end

-- `cmd key` with the values of `list` as arguments, a thousand at a time (Lua's unpack has a
-- limit on how many it spreads; an even step keeps ZADD's score/member pairs together).
local function call_spread(cmd, key, list)
  for i = 1, #list, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
  end
end

-- How many of the records of jobs `ids` exist: one EXISTS per thousand, where asking job by job
-- would be a command per job.
local function count_existing(ids)
  local keys = {}
  for _, id in ipairs(ids) do keys[#keys + 1] = job_key(id) end
  local found = 0
  for i = 1, #keys, 1000 do
    found = found + redis.call('EXISTS', unpack(keys, i, math.min(i + 999, #keys)))
  end
  return found
end

-- Leave one token for a worker blocked in BLPOP; never more than one (under load one is
-- usually there already: then this is a single LLEN).
local function wake()
  if redis.call('LLEN', KEYS[5]) == 0 then redis.call('RPUSH', KEYS[5], 1) end
end

-- Sequence numbers this call reserved (`reserve_seq`) and has not handed out yet.
local seq_next, seq_last = 1, 0

-- Reserves `n` sequence numbers in one INCRBY for the jobs this call is about to list as ready
-- (a number left unused, by a job that was scheduled instead, is a harmless gap).
local function reserve_seq(n)
  if n > 0 then
    seq_last = redis.call('INCRBY', KEYS[6], n)
    seq_next = seq_last - n + 1
  end
end

-- List job `id` as ready: at the front of its priority (`front`), or behind the rest. With
-- `into`, its score and id are added there for one ZADD of many (`call_spread`) instead.
local function list_ready(id, prio, front, into)
  local seq = 0 -- at the front: ahead of every sequence number
  if not front and seq_next <= seq_last then
    seq = seq_next
    seq_next = seq_next + 1
  elseif not front then
    seq = redis.call('INCR', KEYS[6])
  end
  local score = int(ready_score(tonumber(prio), seq))
  if into then
    into[#into + 1] = score
    into[#into + 1] = id
  else
    redis.call('ZADD', KEYS[1], score, id)
  end
end

local function make_ready(id, front)
  local jk = job_key(id)
  list_ready(id, redis.call('HGET', jk, 'prio'), front)
  redis.call('HSET', jk, 'state', 'ready')
end

-- `now` as `int` writes it, formatted once per call of a script that creates many jobs.
local stamped, stamp
local function stamp_of(now)
  if now ~= stamped then stamped, stamp = now, int(now) end
  return stamp
end

-- Create job `id` (its id is known to be free), due at `run_at` ms (0 or past: now). Returns
-- true if it went straight to ready (the caller wakes a worker). One write of the record; `into`
-- as for `list_ready`. Its attempt and lease counters start absent (read as 0): every field
-- written here is an argument Redis makes twice and a field every pending job keeps.
local function new_job(id, inv, prio, max, run_at, now, into)
  local jk = job_key(id)
  local ready = run_at <= now
  redis.call('HSET', jk, 'inv', inv, 'max', max, 'prio', prio, 'enq', stamp_of(now), 'state', ready and 'ready' or 'scheduled')
  if ready then
    list_ready(id, prio, false, into)
  else
    redis.call('ZADD', KEYS[2], int(run_at), id)
  end
  return ready
end

-- Record a failed attempt: `err` is the latest (JSON), `errs` the last MAX_ERRORS, one per line.
local function failed(jk, err)
  local all = redis.call('HGET', jk, 'errs')
  all = all and (all .. '\n' .. err) or err
  local _, lines = string.gsub(all, '\n', '\n')
  if lines >= MAX_ERRORS then all = string.sub(all, string.find(all, '\n', 1, true) + 1) end
  redis.call('HSET', jk, 'err', err, 'errs', all)
end

-- The queue's index of jobs that ended `state` (succeeded or cancelled; score: when).
local function final_key(state)
  return FINAL[state]
end

-- Drop index entries older than the result TTL `ttl` (s), and all but the newest MAX_FINISHED.
local function trim_final(key, now, ttl)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - ttl * 1000)
  redis.call('ZREMRANGEBYRANK', key, 0, -(MAX_FINISHED + 1))
end

-- List one job that ended `state` in the queue's index of those.
local function list_final(id, state, now, ttl)
  local key = final_key(state)
  redis.call('ZADD', key, now, id)
  trim_final(key, now, ttl)
end

-- Refuse an enqueue of `new` jobs that would take the queue past its size limit (`limit_size`
-- in stats: jobs ready, scheduled or leased). Returns an error reply, or nil when there is room.
local function check_room(new)
  local max = tonumber(redis.call('HGET', KEYS[7], 'limit_size'))
  if not max or new == 0 then return nil end
  local size = redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3])
  if size + new > max then
    return redis.error_reply('wasmq: queue full (holds ' .. size .. ', limit ' .. max .. '): nothing was enqueued')
  end
  return nil
end

-- Add to the queue's running totals (enqueued, succeeded, failed, retried, dead, cancelled,
-- recovered).
local function count(field, n)
  if n > 0 then redis.call('HINCRBY', KEYS[7], field, n) end
end

-- Bytes of results and errors a batch's callback receives in all (MAX_BATCH_RESULTS_BYTES in
-- broker/types.rs); past it a job's entry says `result_omitted` or `error_omitted` instead.
local MAX_BATCH_RESULTS = 262144

-- The raw JSON text of field `name` of `json`, an object serde wrote, or nil when it is absent or
-- longer than `max` bytes. Its first `,"<name>":` is the field: the text cannot occur inside a
-- string, where every quote is escaped. The value ends at the first `,` or closing bracket
-- outside strings and nested brackets.
local function raw_field(json, name, max)
  local _, e = string.find(json, ',"' .. name .. '":', 1, true)
  if not e then return nil end
  local start, i, depth = e + 1, e + 1, 0
  while true do
    i = string.find(json, '[%[%]{}",]', i)
    if not i or i - start > max then return nil end
    local c = string.sub(json, i, i)
    if c == '"' then
      -- Skip the string: to the next quote not escaped.
      repeat
        i = string.find(json, '["\\]', i + 1)
        if not i then return nil end
        local q = string.sub(json, i, i) == '"'
        if not q then i = i + 1 end
      until q
    elseif c == '{' or c == '[' then
      depth = depth + 1
    elseif depth == 0 then
      return string.sub(json, start, i - 1)
    elseif c ~= ',' then
      depth = depth - 1
    end
    i = i + 1
  end
end

-- A job of batch `bid` (its `batch` field; nil: none) ended: counted once per job in the queue's
-- unsettled batch ends (declared by `declare_final`), and listed in ENDED for the script's reply.
-- Settling the count and enqueuing the callback are a second step (batch_settle.lua,
-- batch_callback.lua): the callback needs the records of all the batch's jobs, which a script
-- ending one job does not declare.
local ENDED, ended_seen = {}, {}
local function batch_ended(id, bid)
  if not bid or redis.call('HSETNX', job_key(id), 'batch_counted', 1) == 0 then return end
  redis.call('HINCRBY', FINAL.batch_ends, bid, 1)
  if not ended_seen[bid] then
    ended_seen[bid] = true
    ENDED[#ENDED + 1] = bid
  end
end

-- The job became final: wake everyone waiting for it, and count it in its batch. `batch` and
-- `waiters` are its fields of those names as read before (nil where absent).
local function notify_known(id, batch, waiters)
  batch_ended(id, batch)
  local n = tonumber(waiters or '0')
  if n > 0 then
    local dk = done_key(id)
    for _ = 1, n do redis.call('RPUSH', dk, 1) end
    redis.call('EXPIRE', dk, 300)
    redis.call('HDEL', job_key(id), 'waiters')
  end
end

-- `notify_known`, reading the two fields first.
local function notify(id)
  local f = redis.call('HMGET', job_key(id), 'batch', 'waiters')
  notify_known(id, f[1], f[2])
end

-- End a job as cancelled; its record is kept for the result TTL like a success.
local function cancelled(id, ttl)
  local jk = job_key(id)
  local now = now_ms()
  list_final(id, 'cancelled', now, ttl)
  redis.call('HSET', jk, 'state', 'cancelled', 'fin', now)
  redis.call('HDEL', jk, 'cancel')
  if redis.call('HEXISTS', jk, 'held') == 0 then redis.call('EXPIRE', jk, ttl) end
  notify(id)
end

-- Whether `id` is leased under `token`.
local function holds(id, token)
  local cur = redis.call('HMGET', job_key(id), 'state', 'lease')
  return cur[1] == 'leased' and cur[2] == token
end

-- The checks a direct writer's jobs get before enqueue.lua creates them (docs/redis-enqueue.lua
-- is common.lua, this file and enqueue.lua): they refuse what would break a worker. The broker's
-- own enqueue (common.lua and enqueue.lua) leaves them out: its jobs were checked before
-- (`Invocation::prepare`) and their invocation JSON is written from typed fields.
--
-- Whether `inv` has a `"module": "sha256:<64 hex digits>"` field: the pattern is tried only where
-- `"module"` occurs (unanchored, Lua tries it at every byte, a quarter of the script's CPU).
local MODULE_VALUE = '^"module"%s*:%s*"sha256:' .. string.rep('[0-9a-f]', 64) .. '"'
local function has_module(inv)
  local at = string.find(inv, '"module"', 1, true)
  while at do
    if string.find(inv, MODULE_VALUE, at) then return true end
    at = string.find(inv, '"module"', at + 1, true)
  end
  return false
end
-- Returns the refusal of the first job that fails a check (`refuse(id, what)` makes it), or nil.
check_jobs = function(refuse)
  for i = 4, #ARGV, 5 do
    local id, inv, prio, max, run_at = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
    if id == '' or string.len(id) > 200 or string.find(id, '[%s%c]') then return refuse(id, 'id must be 1 to 200 visible characters') end
    if string.sub(inv, 1, 1) ~= '{' then return refuse(id, 'invocation is not a JSON object') end
    if not has_module(inv) then
      return refuse(id, '`module` must be `sha256:` and 64 lowercase hex digits')
    end
    if not prio or prio ~= math.floor(prio) or prio < -100 or prio > 100 then return refuse(id, 'priority must be an integer from -100 to 100') end
    if not max or max ~= math.floor(max) or max < 1 or max > 100 then return refuse(id, 'max attempts must be an integer from 1 to 100') end
    if not run_at then return refuse(id, 'run_at must be Unix milliseconds (0 for now)') end
  end
end
-- Accept jobs. ARGV[3] = count, then per job: id, invocation JSON, priority, max attempts,
-- run_at ms (0 = now). A job whose id exists is left alone (idempotency).
-- Returns per job 1 (created) or 0 (existed).
--
-- KEYS[8..]: each job's record (`wasmq:{q}:job:<id>`), in order.
--
-- This is also the way in for systems that write to Redis directly: load docs/redis-enqueue.lua
-- (common.lua, enqueue_checks.lua and this file joined), pass the queue's seven keys (see
-- common.lua) and each job's record key after them, and add the queue's name to the
-- `wasmq:queues` set. (Given only the seven, the script builds the record keys from ARGV[1]: that
-- works on one Redis, but not while a cluster moves the queue's slot, nor on Dragonfly.) The
-- checks refuse what would break a worker; the worker checks the rest (the module exists, limits
-- within its ceilings) and fails such jobs with the reason.
local n = tonumber(ARGV[3])
if not n or #ARGV ~= 3 + 5 * n then
  return redis.error_reply('wasmq: ARGV must be job prefix, done prefix, count, then 5 values per job')
end
if #KEYS ~= 7 and #KEYS ~= 7 + n then
  return redis.error_reply('wasmq: KEYS must be the queue\'s seven keys, then one record key per job (' .. n .. ' jobs, ' .. (#KEYS - 7) .. ' record keys)')
end
local ids = ids_in_argv(4, 5)
if #KEYS > 7 then declare(8, ids) else UNDECLARED = true end
local function refuse(id, what) return redis.error_reply('wasmq: job `' .. id .. '`: ' .. what) end
if check_jobs then
  local refused = check_jobs(refuse)
  if refused then return refused end
end
-- exists[id]: the job was there before this call (or comes earlier in it). When none of the
-- records is there, the usual case, no job needs a look of its own.
local found = count_existing(ids)
local new = 0
local exists = {}
for i = 4, #ARGV, 5 do
  local id, inv = ARGV[i], ARGV[i + 1]
  -- A cheap look rather than a full parse: a worker parses the invocation anyway, and one that
  -- does not parse ends dead with the reason.
  if string.len(inv) > MAX_INVOCATION_BYTES then
    return refuse(id, 'invocation is ' .. string.len(inv) .. ' bytes, above the limit of ' .. MAX_INVOCATION_BYTES .. ' (1 MiB of `args` and 4 KiB for the other fields)')
  end
  if exists[id] == nil then
    exists[id] = found > 0 and redis.call('EXISTS', job_key(id)) == 1
    if not exists[id] then new = new + 1 end
  end
end
local full = check_room(new)
if full then return full end
local now = now_ms()
reserve_seq(new)
local out, ready = {}, {}
local woke = false
local created = 0
local j = 0
for i = 4, #ARGV, 5 do
  j = j + 1
  local id, inv, prio, max, run_at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  if exists[id] then
    out[j] = 0
  else
    if new_job(id, inv, prio, max, run_at, now, ready) then woke = true end
    exists[id] = true
    out[j] = 1
    created = created + 1
  end
end
call_spread('ZADD', KEYS[1], ready)
count('enqueued', created)
if woke then wake() end
return out
