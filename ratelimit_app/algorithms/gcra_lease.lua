-- gcra_lease: LEASES.gcra (see the prelude); concatenated after gcra
-- only into the scripts that lease (the driver's "lease" mode, give_back).
-- Leasing: the mark is the TAT after the grant (whole ms, rounded down).
-- Giving back u units moves the TAT back by at most u cells, and never by
-- more than the part of the lease still ahead of now (mark - now): cells in
-- the past were refilled already, so returning them would over-admit.
LEASES.gcra = {
  mark = function(now, limit, period, capacity, state)
    return tonumber(string.match(state, '^(%d+):'))
  end,
  horizon = function()
    return -1
  end,
  give_back = function(key, field, now, limit, period, capacity, units, mark)
    local t, f = parse_state(redis.call('HGET', key, field), '^(%d+):(%d+)$')
    if not t then return 0 end
    local debt = math.max(0, (tonumber(t) - now) * limit + tonumber(f))
    local credit = math.min(units * period, math.max(0, (mark - now) * limit), debt)
    if credit <= 0 then return 0 end
    debt = debt - credit
    if debt == 0 then
      redis.call('HDEL', key, field)
    else
      redis.call('HSET', key, field,
        int(now + math.floor(debt / limit)) .. ':' .. int(debt % limit))
    end
    return math.floor(credit / period)
  end,
}
