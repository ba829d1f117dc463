-- prelude: helpers shared by every algorithm; concatenated first.
-- Every algorithm registers ALGORITHMS.<name> = function(key, now, limit,
-- period, capacity, cost) and returns, without writing anything:
--   ok          boolean: `cost` units can be consumed now
--   available   integer units available now (before consuming)
--   retry       ms until `cost` units can pass (0 when ok)
--   reset_now   ms until the state is back to full, from the current state;
--               nil when costly to compute: RESETS.<name>(key, now, period)
--               then computes it, only if the driver needs it
--   reset_next  ms until full after consuming `cost` (also the key's TTL)
--   state       the string to SET (with PX reset_next) when consuming; an
--               algorithm with other storage registers COMMITS.<name>(key,
--               now, period, cost) instead
-- An algorithm whose units a process may lease (see leases.py) registers
-- LEASES.<name> = {mark = function(now, limit, period, capacity, state),
-- horizon = function(now, period), give_back = function(key, now, limit,
-- period, capacity, units, mark)}: the mark a grant hands the process (a
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
