-- token_bucket: a bucket of `capacity` tokens, full at first, refilled at
-- `limit` tokens per `period` ms; a request takes `cost` tokens.
-- KEYS: a string "tokens_scaled:updated_ms"; tokens are scaled by `period`
-- so refill (`limit` scaled units per ms) stays in integers.
-- ARGV (per rule, unpacked by the driver): limit, period_ms, capacity, cost.
-- Returns: ok, available, retry, reset_now, reset_next, state (see prelude).
-- TTL: the time to refill completely.
-- The scaled tokens in the bucket at `now` (full when the key is absent).
local function tokens_at(key, now, limit, full)
  local t, ts = parse_state(redis.call('GET', key), '^(%d+):(%d+)$')
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

ALGORITHMS.token_bucket = function(key, now, limit, period, capacity, cost)
  local full = capacity * period
  local tokens = tokens_at(key, now, limit, full)
  local need = cost * period
  local ok = tokens >= need
  local retry = ok and 0 or ceil_div(need - tokens, limit)
  local reset_next = ceil_div(full - tokens + need, limit)
  local state = ok and int(tokens - need) .. ':' .. int(now)
  return ok, math.floor(tokens / period), retry,
    ceil_div(full - tokens, limit), reset_next, state
end

-- Leasing: the mark is when the bucket is full again after the grant (whole
-- ms, rounded down). Giving back u units adds at most u tokens, and never more
-- than the refill still ahead of now (mark - now): tokens the refill has
-- already replaced would over-admit.
LEASES.token_bucket = {
  mark = function(now, limit, period, capacity, state)
    local tokens = tonumber(string.match(state, '^(%d+):'))
    return now + math.floor((capacity * period - tokens) / limit)
  end,
  horizon = function()
    return -1
  end,
  give_back = function(key, now, limit, period, capacity, units, mark)
    local full = capacity * period
    local tokens = tokens_at(key, now, limit, full)
    local credit = math.min(units * period, math.max(0, (mark - now) * limit),
      full - tokens)
    if credit <= 0 then return 0 end
    tokens = tokens + credit
    if tokens >= full then
      redis.call('DEL', key)
    else
      redis.call('SET', key, int(tokens) .. ':' .. int(now), 'PX', ceil_div(full - tokens, limit))
    end
    return math.floor(credit / period)
  end,
}
