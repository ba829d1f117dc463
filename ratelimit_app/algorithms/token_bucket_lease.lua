-- token_bucket_lease: LEASES.token_bucket (see the prelude); concatenated after token_bucket
-- only into the scripts that lease (the driver's "lease" mode, give_back).
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
  give_back = function(key, field, now, limit, period, capacity, units, mark)
    local full = capacity * period
    local tokens = tokens_at(redis.call('HGET', key, field), now, limit, full)
    local credit = math.min(units * period, math.max(0, (mark - now) * limit),
      full - tokens)
    if credit <= 0 then return 0 end
    tokens = tokens + credit
    if tokens >= full then
      redis.call('HDEL', key, field)
    else
      redis.call('HSET', key, field, int(tokens) .. ':' .. int(now))
    end
    return math.floor(credit / period)
  end,
}
