-- Cancel job ARGV[3]; ARGV[4] = result TTL in seconds. A ready or scheduled job ends cancelled
-- now; a leased one is flagged, and its worker (told by the next heartbeat) stops it and acks it as
-- cancelled. Returns 'cancelled', 'cancelling', 'final:<state>' if it had already ended, or
-- 'missing', with the batches whose jobs ended ({outcome, batches}). KEYS[8..10] as in
-- `declare_final`; KEYS[11], KEYS[12]: its record and waiter list.
local id = ARGV[3]
declare_final(8)
declare(11, {id}, true)
local state = redis.call('HGET', job_key(id), 'state')
if not state then return {'missing', ENDED} end
if state == 'ready' or state == 'scheduled' then
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  cancelled(id, tonumber(ARGV[4]))
  count('cancelled', 1)
  return {'cancelled', ENDED}
elseif state == 'leased' then
  redis.call('HSET', job_key(id), 'cancel', 1)
  return {'cancelling', ENDED}
end
return {'final:' .. state, ENDED}
