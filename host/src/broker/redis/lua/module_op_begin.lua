-- Begin an upload or deletion of module ARGV[1]: KEYS[1] = the operations under way (hash: hex
-- digest → `<ms>:<token>`, the ms by Redis's clock), ARGV[2] = this operation's token, ARGV[3] =
-- ms after which another operation's entry counts as one whose process died. One operation per
-- module at a time, so an upload and a deletion of the same module never interleave (the bytes
-- and the index are two slots on a cluster: neither can be changed with the other in one step).
-- Returns this operation's entry, or false while another's is younger than ARGV[3].
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local began = tonumber(string.match(cur, '^(%d+):'))
  if began and now - began < tonumber(ARGV[3]) then return false end
end
local entry = string.format('%d', now) .. ':' .. ARGV[2]
redis.call('HSET', KEYS[1], ARGV[1], entry)
return entry
