-- token_bucket: a bucket of `capacity` tokens, full at first, refilled at
-- `limit` tokens per `period` ms; a request takes `cost` tokens.
-- State (a field of the identity's state hash): "tokens_scaled:updated_ms";
-- tokens are scaled by `period`
-- so refill (`limit` scaled units per ms) stays in integers.
-- ARGV (per rule, unpacked by the driver): limit, period_ms, capacity, cost.
-- Returns: ok, available, retry, reset_now, reset_next, state (see prelude).
-- Needed for: the time to refill completely.
-- The scaled tokens in the bucket at `now` (full when the state is absent).
local function tokens_at(value, now, limit, full)
  local t, ts = parse_state(value, '^(%d+):(%d+)$')
  if not t then return full end
  local tokens = math.min(full, tonumber(t))
  local elapsed = now - tonumber(ts)
  if elapsed > 0 then
    if elapsed >= ceil_div(full - tokens, limit) then
      tokens = full
    else
      tokens = tokens + elapsed * limit
    end
  end
  return tokens
end

ALGORITHMS.token_bucket = function(value, now, limit, period, capacity, cost)
  local full = capacity * period
  local tokens = tokens_at(value, now, limit, full)
  local need = cost * period
  local ok = tokens >= need
  local retry = ok and 0 or ceil_div(need - tokens, limit)
  local reset_next = ceil_div(full - tokens + need, limit)
  local state = ok and int(tokens - need) .. ':' .. int(now)
  return ok, math.floor(tokens / period), retry,
    ceil_div(full - tokens, limit), reset_next, state
end
