-- Register a waiter on job ARGV[3] unless it is already final. Returns its state (false if none).
local jk = ARGV[1] .. ARGV[3]
local state = redis.call('HGET', jk, 'state')
if state and state ~= 'succeeded' and state ~= 'dead' then
  redis.call('HINCRBY', jk, 'waiters', 1)
end
return state
