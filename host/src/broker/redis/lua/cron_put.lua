-- Add or replace cron entry ARGV[3] of this queue: KEYS[8] = the queue's cron entries (hash:
-- name → entry JSON), KEYS[9] = their next ticks (hash: name → Unix ms); ARGV[4] = entry JSON,
-- ARGV[5] = next tick.
redis.call('HSET', KEYS[8], ARGV[3], ARGV[4])
redis.call('HSET', KEYS[9], ARGV[3], ARGV[5])
return 1
