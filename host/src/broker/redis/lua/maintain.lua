-- Promote due scheduled jobs and recover expired leases among the candidates the caller read (the
-- heads of the scheduled and leased sets): ARGV[3] = result TTL in seconds (for jobs whose
-- cancellation was pending when their lease expired), ARGV[4] = how many scheduled candidates,
-- ARGV[5] = how many leased candidates, then their ids, then the caller's own leases (id, token):
-- left alone even when expired, for the caller's next heartbeat to renew. KEYS[8..10] as in
-- `declare_final`; then the scheduled candidates' records, then each leased candidate's record and
-- waiter list. A candidate that is no longer due (or no longer there) is skipped, so a stale read
-- is harmless. Safe to run from every worker at once. Returns {promoted, recovered, expired to
-- dead, batches with jobs that ended}.
declare_final(8)
local now = now_ms()
local ttl = tonumber(ARGV[3])
local ns, nl = tonumber(ARGV[4]), tonumber(ARGV[5])
local scheduled, leased, own = {}, {}, {}
for i = 6, 5 + ns do scheduled[#scheduled + 1] = ARGV[i] end
for i = 6 + ns, 5 + ns + nl do leased[#leased + 1] = ARGV[i] end
for i = 6 + ns + nl, #ARGV, 2 do own[ARGV[i]] = ARGV[i + 1] end
declare(declare(11, scheduled), leased, true)

local function due(set, id)
  local at = redis.call('ZSCORE', set, id)
  return at and tonumber(at) <= now
end

local promoted, recovered, died = 0, 0, 0
for _, id in ipairs(scheduled) do
  if due(KEYS[2], id) then
    redis.call('ZREM', KEYS[2], id)
    if redis.call('EXISTS', job_key(id)) == 1 then
      make_ready(id, false)
      promoted = promoted + 1
    end
  end
end
for _, id in ipairs(leased) do
  local jk = job_key(id)
  local f = redis.call('HMGET', jk, 'attempts', 'max', 'worker', 'cancel', 'lease')
  local mine = own[id] ~= nil and own[id] == f[5]
  if mine or not due(KEYS[3], id) then
    -- Renewed since the caller read it, or the caller's, running: its heartbeat renews it.
  elseif not f[1] then
    redis.call('ZREM', KEYS[3], id)
  elseif f[4] then
    redis.call('ZREM', KEYS[3], id)
    cancelled(id, ttl)
    count('cancelled', 1)
  else
    redis.call('ZREM', KEYS[3], id)
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
return {promoted, recovered, died, ENDED}
