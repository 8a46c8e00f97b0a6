-- Cancel job ARGV[3]; ARGV[4] = result TTL in seconds. A ready or scheduled job ends cancelled
-- now; a leased one is flagged, and its worker (told by the next heartbeat) stops it and acks it as
-- cancelled. Returns 'cancelled', 'cancelling', 'final:<state>' if it had already ended, or
-- 'missing'.
local id = ARGV[3]
local state = redis.call('HGET', ARGV[1] .. id, 'state')
if not state then return 'missing' end
if state == 'ready' or state == 'scheduled' then
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  cancelled(id, tonumber(ARGV[4]))
  count('cancelled', 1)
  return 'cancelled'
elseif state == 'leased' then
  redis.call('HSET', ARGV[1] .. id, 'cancel', 1)
  return 'cancelling'
end
return 'final:' .. state
