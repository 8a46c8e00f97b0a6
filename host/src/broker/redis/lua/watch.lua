-- Register a waiter on job ARGV[3] (its record KEYS[8]) unless it is already final. Returns its
-- state (false if none).
local jk = KEYS[8]
local state = redis.call('HGET', jk, 'state')
if state and state ~= 'succeeded' and state ~= 'dead' then
  redis.call('HINCRBY', jk, 'waiters', 1)
end
return state
