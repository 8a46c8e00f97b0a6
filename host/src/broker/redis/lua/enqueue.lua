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
