-- An upload or deletion of module ARGV[1] ended: its entry in the operations under way (KEYS[1],
-- hash: hex digest → `<ms>:<token>`) is removed if it is still this operation's (ARGV[2]); one
-- that began since is left for its own end.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
