-- Promote due scheduled jobs and recover expired leases, at most ARGV[3] of each; ARGV[4] is the
-- result TTL in seconds (for jobs whose cancellation was pending when their lease expired);
-- ARGV[5..] the caller's own leases (id, token): left alone even when expired, for the caller's
-- next heartbeat to renew. Safe to run from every worker at once. Returns {promoted, recovered,
-- expired to dead}.
local now = now_ms()
local limit = tonumber(ARGV[3])
local own, owned = {}, 0
for i = 5, #ARGV, 2 do
  own[ARGV[i]] = ARGV[i + 1]
  owned = owned + 1
end
local promoted, recovered, died = 0, 0, 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', KEYS[2], id)
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then
    make_ready(id, false)
    promoted = promoted + 1
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, limit + owned)) do
  local jk = ARGV[1] .. id
  local f = redis.call('HMGET', jk, 'attempts', 'max', 'worker', 'cancel', 'lease')
  local mine = own[id] ~= nil and own[id] == f[5]
  if not mine then redis.call('ZREM', KEYS[3], id) end
  if mine then
    -- The caller's, running: its heartbeat renews it.
  elseif f[1] and f[4] then
    cancelled(id, tonumber(ARGV[4]))
    count('cancelled', 1)
  elseif f[1] then
    -- Mirrors memory.rs `lease_expired`.
    local err = cjson.encode({
      attempt = tonumber(f[1]), kind = 'lease_expired', at_ms = now,
      message = 'the lease expired: worker `' .. (f[3] or '?') ..
        '` stopped heartbeating (killed, hung or cut off from the broker)'})
    failed(jk, err)
    if tonumber(f[1]) >= tonumber(f[2]) then
      redis.call('HSET', jk, 'state', 'dead', 'fin', now)
      redis.call('ZADD', KEYS[4], now, id)
      notify(id)
      died = died + 1
    else
      make_ready(id, false)
      recovered = recovered + 1
    end
  end
end
count('recovered', recovered)
count('dead', died)
if promoted + recovered > 0 then wake() end
return {promoted, recovered, died}
