-- The checks a direct writer's jobs get before enqueue.lua creates them (docs/redis-enqueue.lua
-- is common.lua, this file and enqueue.lua): they refuse what would break a worker. The broker's
-- own enqueue (common.lua and enqueue.lua) leaves them out: its jobs were checked before
-- (`Invocation::prepare`) and their invocation JSON is written from typed fields.
--
-- Whether `inv` has a `"module": "sha256:<64 hex digits>"` field: the pattern is tried only where
-- `"module"` occurs (unanchored, Lua tries it at every byte, a quarter of the script's CPU).
local MODULE_VALUE = '^"module"%s*:%s*"sha256:' .. string.rep('[0-9a-f]', 64) .. '"'
local function has_module(inv)
  local at = string.find(inv, '"module"', 1, true)
  while at do
    if string.find(inv, MODULE_VALUE, at) then return true end
    at = string.find(inv, '"module"', at + 1, true)
  end
  return false
end
-- Returns the refusal of the first job that fails a check (`refuse(id, what)` makes it), or nil.
check_jobs = function(refuse)
  for i = 4, #ARGV, 5 do
    local id, inv, prio, max, run_at = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
    if id == '' or string.len(id) > 200 or string.find(id, '[%s%c]') then return refuse(id, 'id must be 1 to 200 visible characters') end
    if string.sub(inv, 1, 1) ~= '{' then return refuse(id, 'invocation is not a JSON object') end
    if not has_module(inv) then
      return refuse(id, '`module` must be `sha256:` and 64 lowercase hex digits')
    end
    if not prio or prio ~= math.floor(prio) or prio < -100 or prio > 100 then return refuse(id, 'priority must be an integer from -100 to 100') end
    if not max or max ~= math.floor(max) or max < 1 or max > 100 then return refuse(id, 'max attempts must be an integer from 1 to 100') end
    if not run_at then return refuse(id, 'run_at must be Unix milliseconds (0 for now)') end
  end
end
