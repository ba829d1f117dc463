-- leaky_bucket: the leaky bucket as a meter. Each request pours `cost` into
-- a bucket of `capacity` that leaks `limit` units per `period` ms; a request
-- that would overflow it is denied (never queued or delayed).
-- State (a field of the identity's state hash): "level_scaled:updated_ms";
-- the level is scaled by `period`
-- so the leak (`limit` scaled units per ms) stays in integers.
-- ARGV (per rule, unpacked by the driver): limit, period_ms, capacity, cost.
-- Returns: ok, available, retry, reset_now, reset_next, state (see prelude).
-- Needed for: the time for the bucket to drain completely.
ALGORITHMS.leaky_bucket = function(value, now, limit, period, capacity, cost)
  local full = capacity * period
  local level = 0
  local l, ts = parse_state(value, '^(%d+):(%d+)$')
  if l then
    level = tonumber(l)
    local elapsed = now - tonumber(ts)
    if elapsed > 0 then
      if elapsed >= ceil_div(level, limit) then
        level = 0
      else
        level = level - elapsed * limit
      end
    end
  end
  local need = cost * period
  local ok = level + need <= full
  local retry = ok and 0 or ceil_div(level + need - full, limit)
  local reset_next = ceil_div(level + need, limit)
  local state = ok and int(level + need) .. ':' .. int(now)
  return ok, math.max(0, math.floor((full - level) / period)), retry,
    ceil_div(level, limit), reset_next, state
end
