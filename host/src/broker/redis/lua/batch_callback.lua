-- Enqueue the callback of batch ARGV[3] once none of its jobs is pending (it is in KEYS[8], the
-- queue's batches due a callback): its args an object with `batch` and `jobs`: each job's id,
-- final state, and its result (succeeded) or last error (dead), within MAX_BATCH_RESULTS bytes in
-- all. KEYS[9], KEYS[10]: the batch's hash and job list; KEYS[11]: the callback's record (its id
-- ARGV[4]); KEYS[12..]: the records of the batch's jobs, ids ARGV[5..] in the list's order.
-- Safe to repeat: returns 1 if this call enqueued it, 0 if it was not due.
local bid = ARGV[3]
local bk = KEYS[9]
if redis.call('SISMEMBER', KEYS[8], bid) == 0 then return 0 end
local ids = ids_in_argv(5, 1)
if redis.call('LLEN', KEYS[10]) ~= #ids then
  return redis.error_reply('wasmq: batch `' .. bid .. '` lists ' .. redis.call('LLEN', KEYS[10]) .. ' jobs, ' .. #ids .. ' declared')
end
if redis.call('HEXISTS', bk, 'done') == 1 then
  redis.call('SREM', KEYS[8], bid)
  return 0
end
declare(12, ids)
JOB[ARGV[4]] = KEYS[11]
local b = redis.call('HMGET', bk, 'callback', 'callback_id', 'prio', 'max')
if b[2] ~= ARGV[4] then
  return redis.error_reply('wasmq: batch `' .. bid .. '` has callback `' .. tostring(b[2]) .. '`, not `' .. ARGV[4] .. '`')
end
local entries, left = {}, MAX_BATCH_RESULTS
for _, jid in ipairs(ids) do
  local f = redis.call('HMGET', job_key(jid), 'state', 'report', 'err')
  local state = f[1] or 'expired'
  local entry = '{"id":' .. cjson.encode(jid) .. ',"state":' .. cjson.encode(state)
  local name, raw, present = nil, nil, false
  if state == 'succeeded' and f[2] then
    name, present = 'result', string.find(f[2], ',"result":', 1, true) ~= nil
    if present then raw = raw_field(f[2], 'result', left) end
  elseif state == 'dead' and f[3] then
    name, present = 'error', true
    if string.len(f[3]) <= left then raw = f[3] end
  end
  if raw then
    entry = entry .. ',"' .. name .. '":' .. raw
    left = left - string.len(raw)
  elseif present then
    entry = entry .. ',"' .. name .. '_omitted":true'
  end
  entries[#entries + 1] = entry .. '}'
end
local inv = cjson.decode(b[1])
local args = inv.args
if type(args) ~= 'table' or args[1] ~= nil then args = {} end
args.batch = bid
inv.args = args
-- The entries hold results as their jobs wrote them; a placeholder no other text contains
-- stands for them while the rest is encoded.
local plain = cjson.encode(inv)
local n = 0
local mark
repeat
  n = n + 1
  mark = 'wasmq-batch-jobs-' .. n
until not string.find(plain, mark, 1, true)
args.jobs = mark
local text = cjson.encode(inv)
local at = string.find(text, '"' .. mark .. '"', 1, true)
text = string.sub(text, 1, at - 1) .. '[' .. table.concat(entries, ',') .. ']' .. string.sub(text, at + string.len(mark) + 2)
local ck = KEYS[11]
if redis.call('EXISTS', ck) == 0 then
  new_job(b[2], text, b[3], b[4], 0, now_ms())
  count('enqueued', 1)
  wake()
end
redis.call('HSET', bk, 'done', now_ms())
redis.call('SREM', KEYS[8], bid)
return 1
