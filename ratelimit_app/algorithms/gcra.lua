-- gcra: the generic cell rate algorithm (virtual scheduling). Each unit moves
-- the theoretical arrival time (TAT) on by period / limit ms; a request passes
-- when its new TAT is at most capacity * period / limit ms ahead of now.
-- State (a field of the identity's state hash): "tat_ms:fraction",
-- TAT = tat_ms + fraction / limit exactly.
-- ARGV (per rule, unpacked by the driver): limit, period_ms, capacity, cost.
-- Returns: ok, available, retry, reset_now, reset_next, state (see prelude).
-- Needed for: until the TAT (the time for the state to be full again).
ALGORITHMS.gcra = function(value, now, limit, period, capacity, cost)
  -- debt = (TAT - now) * limit, never negative: a past TAT means "full".
  local debt = 0
  local t, f = parse_state(value, '^(%d+):(%d+)$')
  if t then
    debt = math.max(0, (tonumber(t) - now) * limit + tonumber(f))
  end
  local tolerance = capacity * period
  local need = cost * period
  local ok = debt + need <= tolerance
  local retry = ok and 0 or ceil_div(debt + need - tolerance, limit)
  local reset_next = ceil_div(debt + need, limit)
  local state
  if ok then
    local after = debt + need
    state = int(now + math.floor(after / limit)) .. ':' .. int(after % limit)
  end
  return ok, math.max(0, math.floor((tolerance - debt) / period)), retry,
    ceil_div(debt, limit), reset_next, state
end
