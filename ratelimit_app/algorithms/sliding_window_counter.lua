-- sliding_window_counter: the two-window weighted estimate. The previous
-- window's count weighs (period - elapsed) / period; a request passes when
-- previous * weight + current + cost <= capacity. Windows align to the epoch.
-- State (a field of the identity's state hash): "window_start_ms:current:previous".
-- ARGV (per rule, unpacked by the driver): limit, period_ms, capacity, cost.
-- Returns: ok, available, retry, reset_now, reset_next, state (see prelude).
-- Needed for: until the current window's count stops weighing (<= 2 * period).
ALGORITHMS.sliding_window_counter = function(value, now, limit, period, capacity, cost)
  local start = now - now % period
  local current, previous = 0, 0
  local s, c, p = parse_state(value, '^(%d+):(%d+):(%d+)$')
  if s then
    s = tonumber(s)
    if s == start then
      current, previous = tonumber(c), tonumber(p)
    elseif s == start - period then
      previous = tonumber(c)
    end
  end
  local elapsed = now - start
  local left = period - elapsed
  -- Everything scaled by `period` to stay in integers.
  local used = previous * left + current * period
  local room = capacity * period - used
  local available = math.max(0, math.floor(room / period))
  local ok = cost * period <= room
  local retry = 0
  if not ok and cost <= capacity then
    local spare = capacity - current - cost
    local at = period  -- elapsed time at which it passes, if in this window
    if spare >= 0 and previous > 0 then
      at = period - math.floor(spare * period / previous)
    end
    if at < period then
      retry = at - elapsed
    elseif current == 0 then
      retry = left
    else
      -- Next window: the current count becomes the weighted one.
      local next_at = period - math.floor((capacity - cost) * period / current)
      retry = left + math.max(0, next_at)
    end
  end
  local reset_now = 0
  if current > 0 then reset_now = left + period
  elseif previous > 0 then reset_now = left end
  local state = ok and int(start) .. ':' .. int(current + cost) .. ':' .. int(previous)
  return ok, available, retry, reset_now, left + period, state
end
