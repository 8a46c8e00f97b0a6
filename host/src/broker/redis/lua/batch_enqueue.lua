-- Accept a batch: ARGV[3] = batch id, ARGV[4] = callback job id, ARGV[5] = callback invocation
-- JSON, ARGV[6] = its priority, ARGV[7] = its max attempts, ARGV[8] = job count, then per job: id,
-- invocation JSON, priority, max attempts, run_at ms. All or nothing: refused if any job id
-- exists. Returns 1, or 0 if the batch exists (idempotent on the batch id). KEYS[8], KEYS[9]: the
-- batch's hash and job list; KEYS[10..]: each job's record.
local bid = ARGV[3]
local bk = KEYS[8]
local ids = ids_in_argv(9, 5)
declare(10, ids)
if redis.call('EXISTS', bk) == 1 then return 0 end
if count_existing(ids) > 0 then
  for i = 9, #ARGV, 5 do
    if redis.call('EXISTS', job_key(ARGV[i])) == 1 then
      return redis.error_reply('wasmq: job `' .. ARGV[i] .. '` already exists and cannot join batch `' .. bid .. '`')
    end
  end
end
local full = check_room(tonumber(ARGV[8]))
if full then return full end
local now = now_ms()
local n = tonumber(ARGV[8])
redis.call('HSET', bk, 'pending', n, 'total', n, 'callback', ARGV[5], 'callback_id', ARGV[4], 'prio', ARGV[6], 'max', ARGV[7], 'created', now)
local woke = false
reserve_seq(n)
local ready = {}
for i = 9, #ARGV, 5 do
  local id, inv, prio, max, run_at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  if new_job(id, inv, prio, max, run_at, now, ready) then woke = true end
  redis.call('HSET', job_key(id), 'batch', bid)
  redis.call('RPUSH', KEYS[9], id)
end
call_spread('ZADD', KEYS[1], ready)
count('enqueued', n)
if woke then wake() end
return 1
