-- Settle batch ARGV[3]: apply its jobs' ends counted in KEYS[8] (the queue's unsettled batch ends)
-- to its `pending` in KEYS[10] (its hash); when none is left pending, it joins KEYS[9] (the
-- queue's batches due a callback). Safe to repeat. Returns the callback's id if the batch is due
-- its callback (batch_callback.lua enqueues it), else false.
local bid = ARGV[3]
local ended = tonumber(redis.call('HGET', KEYS[8], bid) or '0')
if ended > 0 then
  redis.call('HDEL', KEYS[8], bid)
  if redis.call('EXISTS', KEYS[10]) == 1
    and redis.call('HINCRBY', KEYS[10], 'pending', -ended) <= 0
    and redis.call('HEXISTS', KEYS[10], 'done') == 0 then
    redis.call('SADD', KEYS[9], bid)
  end
end
if redis.call('SISMEMBER', KEYS[9], bid) == 0 then return false end
local callback = redis.call('HGET', KEYS[10], 'callback_id')
if not callback or redis.call('HEXISTS', KEYS[10], 'done') == 1 then
  redis.call('SREM', KEYS[9], bid)
  return false
end
return callback
