-- Parents and their sub-jobs. ARGV[3] = action:
--   children  (on the parent's queue) ARGV[4] = parent id, then "queue id" of each child: lists
--             them on the parent (`children`, one per line, each once, at most MAX_CHILDREN).
--   hold      (on a child's queue) ARGV[4] = "queue id" of the parent, then child ids: names the
--             parent on each child and holds it (`held`), its record kept past the result TTL.
--   release   (on a child's queue) ARGV[4] = result TTL in seconds, then child ids: no longer
--             held; a child that has already succeeded or been cancelled expires after the TTL.
-- Jobs that do not exist are skipped. Returns how many jobs changed.
-- KEYS[8..]: the records of the jobs named (the parent for `children`, the child ids otherwise).
local MAX_CHILDREN = 10000
local action = ARGV[3]
if action == 'children' then declare(8, {ARGV[4]}) else declare(8, ids_in_argv(5, 1)) end
local changed = 0
if action == 'children' then
  local jk = job_key(ARGV[4])
  if redis.call('EXISTS', jk) == 0 then return 0 end
  local listed = redis.call('HGET', jk, 'children') or ''
  local seen, count = {}, 0
  for line in string.gmatch(listed, '[^\n]+') do
    seen[line] = true
    count = count + 1
  end
  local added = {}
  for i = 5, #ARGV do
    local child = ARGV[i]
    if not seen[child] and count < MAX_CHILDREN then
      seen[child] = true
      count = count + 1
      added[#added + 1] = child
    end
  end
  if #added > 0 then
    redis.call('HSET', jk, 'children', listed .. table.concat(added, '\n') .. '\n')
  end
  return #added
elseif action == 'hold' then
  for i = 5, #ARGV do
    local jk = job_key(ARGV[i])
    if redis.call('EXISTS', jk) == 1 then
      redis.call('HSET', jk, 'parent', ARGV[4], 'held', 1)
      redis.call('PERSIST', jk)
      changed = changed + 1
    end
  end
elseif action == 'release' then
  local ttl = tonumber(ARGV[4])
  for i = 5, #ARGV do
    local jk = job_key(ARGV[i])
    if redis.call('HDEL', jk, 'held') == 1 then
      local state = redis.call('HGET', jk, 'state')
      if state == 'succeeded' or state == 'cancelled' then redis.call('EXPIRE', jk, ttl) end
      changed = changed + 1
    end
  end
else
  return redis.error_reply('wasmq: unknown lineage action `' .. tostring(action) .. '`')
end
return changed
