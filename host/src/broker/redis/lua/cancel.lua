-- Cancel job ARGV[3]; ARGV[4] = result TTL in seconds. A ready or scheduled job ends cancelled
-- now; a leased one is flagged, and its worker (told by the next heartbeat) stops it and acks it as
-- cancelled. Returns 'cancelled', 'cancelling', 'final:<state>' if it had already ended, or
-- 'missing'. KEYS[8], KEYS[9]: the succeeded and cancelled listings; KEYS[10], KEYS[11]: its
-- record and waiter list.
local id = ARGV[3]
declare_final(8)
declare(10, {id}, true)
local state = redis.call('HGET', job_key(id), 'state')
if not state then return 'missing' end
if state == 'ready' or state == 'scheduled' then
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  cancelled(id, tonumber(ARGV[4]))
  count('cancelled', 1)
  return 'cancelled'
elseif state == 'leased' then
  redis.call('HSET', job_key(id), 'cancel', 1)
  return 'cancelling'
end
return 'final:' .. state
