-- Remove cron entry ARGV[3] (KEYS[8], KEYS[9] as in cron_put.lua). Returns 1, or 0 if none.
redis.call('HDEL', KEYS[9], ARGV[3])
return redis.call('HDEL', KEYS[8], ARGV[3])
