-- fixed_window: at most `capacity` units per window of `period` ms; windows
-- are aligned to the Unix epoch.
-- State (a field of the identity's state hash): "window_start_ms:used".
-- ARGV (per rule, unpacked by the driver): limit, period_ms, capacity, cost.
-- Returns: ok, available, retry, reset_now, reset_next, state (see prelude).
-- Needed for: the rest of the window (<= period).
ALGORITHMS.fixed_window = function(value, now, limit, period, capacity, cost)
  local start = now - now % period
  local used = 0
  local s, u = parse_state(value, '^(%d+):(%d+)$')
  if s and tonumber(s) == start then used = tonumber(u) end
  local left = period - (now - start)
  local available = math.max(0, capacity - used)
  local ok = cost <= available
  local retry = ok and 0 or left
  local reset_now = used > 0 and left or 0
  local state = ok and int(start) .. ':' .. int(used + cost)
  return ok, available, retry, reset_now, left, state
end
