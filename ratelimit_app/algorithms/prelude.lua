-- prelude: helpers shared by every algorithm; concatenated first.
-- Where state lives: each algorithm keeps one string per rule, as a field
-- (named after the rule's scope and algorithm) of its identity's state hash,
-- so a call reads every rule of one identity with one HMGET and writes them
-- with one HSET. The hash lives as long as its longest-needed field: its
-- field DEADLINE holds until when (in the script's clock, ms), and a write
-- that needs longer extends it (see store). A stale field reads as a fresh
-- state (each state holds its own times). An algorithm with other storage
-- registers COMMITS.<name> (below) and keeps a key of its own.
-- Every algorithm registers ALGORITHMS.<name> = function(state, now, limit,
-- period, capacity, cost), where state is its field's value (false when
-- absent) or, for one that COMMITS, its key, and returns, without writing
-- anything:
--   ok          boolean: `cost` units can be consumed now
--   available   integer units available now (before consuming)
--   retry       ms until `cost` units can pass (0 when ok)
--   reset_now   ms until the state is back to full, from the current state;
--               nil when costly to compute: RESETS.<name>(key, now, period)
--               then computes it, only if the driver needs it
--   reset_next  ms until full after consuming `cost` (how long the state
--               is needed)
--   state       the string to store in its field when consuming; an
--               algorithm with other storage registers COMMITS.<name>(key,
--               now, period, cost) instead
-- An algorithm whose units a process may lease (see leases.py) registers
-- LEASES.<name> = {mark = function(now, limit, period, capacity, state),
-- horizon = function(now, period), give_back = function(key, field, now,
-- limit, period, capacity, units, mark)}: the mark a grant hands the process (a
-- Redis time in ms), the ms a lease may live at most (-1 = no limit of its
-- own), and taking back unused units no more generously than if they had
-- never been leased (returns the units taken back).
-- Quantities are integers kept below 2^50 (checked in Python), so IEEE
-- doubles represent them exactly. Only the algorithms a call uses are
-- concatenated into its script.
local ALGORITHMS, COMMITS, RESETS, LEASES = {}, {}, {}, {}

-- Lua's tostring keeps 14 significant digits; timestamps need more.
local function int(x)
  return string.format('%d', x)
end

local function ceil_div(a, b)
  return math.ceil(a / b)
end

-- Parse "a:b[:c]" state strings written by int(); nil when absent or corrupt,
-- so a damaged key reads as a fresh client instead of failing the request.
local function parse_state(value, pattern)
  if not value then return nil end
  return string.match(value, pattern)
end

-- A rule's status (see driver.lua) and retry: 3 and -1 (never) when the cost
-- exceeds the capacity, 1 when denied, else 0. Both drivers ask it.
local function status_of(ok, cost, capacity, retry)
  if cost > capacity then return 3, -1 end
  if not ok then return 1, retry end
  return 0, retry
end

-- The state hash's own field: until when it lives (see the top).
local DEADLINE = '~'

-- HMGET of a state hash's DEADLINE and then the fields asked. A key of
-- another type (not written by this engine) is deleted and reads as empty,
-- so its client is decided as a fresh one instead of failing every call.
local function read_state(key, ...)
  local values = redis.pcall('HMGET', key, DEADLINE, ...)
  if values.err then
    redis.call('DEL', key)
    return {}
  end
  return values
end

-- Writes `updates` (field, value, ...) to the state hash `key`, whose DEADLINE
-- read `deadline` (0 when absent), so that it lives until `needed` at least.
-- An extension goes a quarter of the time needed beyond it (a second at
-- least), so a hash in steady use is extended once in a while, not on every
-- call; PEXPIRE is relative, so a test clock's times work too.
local function store(key, updates, needed, deadline, now)
  if needed > deadline then
    local until_ms = needed + math.max(1000, math.floor((needed - now) / 4))
    updates[#updates + 1] = DEADLINE
    updates[#updates + 1] = int(until_ms)
    redis.call('HSET', key, unpack(updates))
    redis.call('PEXPIRE', key, until_ms - now)
  else
    redis.call('HSET', key, unpack(updates))
  end
end
