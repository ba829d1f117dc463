-- fixed_window_lease: LEASES.fixed_window (see the prelude); concatenated after fixed_window
-- only into the scripts that lease (the driver's "lease" mode, give_back).
-- Leasing: a lease lives until the window ends at the latest; the mark is the
-- window's start, and unused units go back only into that same window.
LEASES.fixed_window = {
  mark = function(now, limit, period)
    return now - now % period
  end,
  horizon = function(now, period)
    return period - now % period
  end,
  give_back = function(key, field, now, limit, period, capacity, units, mark)
    local start = now - now % period
    if start ~= mark then return 0 end
    local s, u = parse_state(redis.call('HGET', key, field), '^(%d+):(%d+)$')
    if not s or tonumber(s) ~= start then return 0 end
    local back = math.min(units, tonumber(u))
    if back > 0 then
      redis.call('HSET', key, field, int(start) .. ':' .. int(tonumber(u) - back))
    end
    return back
  end,
}
