-- The maintenance pass's candidates, by Redis's clock (the one that wrote the scores): up to
-- ARGV[3] ids of scheduled jobs due now (KEYS[2]) and up to ARGV[4] ids of leases expired now
-- (KEYS[3]), earliest first. Only reads; maintain.lua checks each again, later, so a job that
-- stops being due in between is left alone. Returns {scheduled ids, leased ids}.
local now = int(now_ms())
return {
  redis.call('ZRANGE', KEYS[2], '-inf', now, 'BYSCORE', 'LIMIT', 0, ARGV[3]),
  redis.call('ZRANGE', KEYS[3], '-inf', now, 'BYSCORE', 'LIMIT', 0, ARGV[4]),
}
