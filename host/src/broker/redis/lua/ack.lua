-- Acknowledge attempts: ARGV[3] = result TTL in seconds, then per job: id, token,
-- action (ok | retry | dead | cancelled), retry delay ms, error JSON (or ''), report JSON (or '').
-- State, result, output and the lease change together. A retry of a job whose cancellation was
-- requested ends it as cancelled instead. Returns how many acks were stale.
local now = now_ms()
local ttl = tonumber(ARGV[3])
local stale = 0
local n = {succeeded = 0, failed = 0, retried = 0, dead = 0, cancelled = 0}
-- Succeeded jobs are listed in one ZADD after the loop: `now` and id, alternately.
local listed = {}
for i = 4, #ARGV, 6 do
  local id, token, action, delay, err, report = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5]
  local jk = ARGV[1] .. id
  if not holds(id, token) then
    stale = stale + 1
  else
    redis.call('ZREM', KEYS[3], id)
    if report ~= '' then redis.call('HSET', jk, 'report', report) end
    if err ~= '' then failed(jk, err); n.failed = n.failed + 1 end
    if action == 'retry' and redis.call('HEXISTS', jk, 'cancel') == 1 then action = 'cancelled' end
    if action == 'ok' then
      redis.call('HSET', jk, 'state', 'succeeded', 'fin', now)
      listed[#listed + 1] = now
      listed[#listed + 1] = id
      redis.call('HDEL', jk, 'cancel')
      -- A sub-job held for its parent is kept until the parent releases it.
      if redis.call('HEXISTS', jk, 'held') == 0 then redis.call('EXPIRE', jk, ttl) end
      notify(id)
      n.succeeded = n.succeeded + 1
    elseif action == 'retry' then
      redis.call('HSET', jk, 'state', 'scheduled')
      redis.call('ZADD', KEYS[2], now + delay, id)
      n.retried = n.retried + 1
    elseif action == 'cancelled' then
      cancelled(id, ttl)
      n.cancelled = n.cancelled + 1
    else
      redis.call('HSET', jk, 'state', 'dead', 'fin', now)
      redis.call('HDEL', jk, 'cancel')
      redis.call('ZADD', KEYS[4], now, id)
      notify(id)
      n.dead = n.dead + 1
    end
  end
end
if #listed > 0 then
  local key = final_key('succeeded')
  redis.call('ZADD', key, unpack(listed))
  trim_final(key, now, ttl)
end
for field, v in pairs(n) do count(field, v) end
-- A concurrency-limited queue has a free slot now: wake a worker for it.
if redis.call('HEXISTS', KEYS[7], 'limit_concurrency') == 1 and redis.call('ZCARD', KEYS[1]) > 0 then wake() end
return stale
