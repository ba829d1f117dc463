-- sliding_window_log: exact; at most `capacity` units in any `period` ms.
-- Its own key (not a hash field): a sorted set, one member per unit scored
-- by its time in ms, plus the
-- member "#seq" (negative score) that numbers members uniquely.
-- ARGV (per rule, unpacked by the driver): limit, period_ms, capacity, cost.
-- Returns: ok, available, retry, nil (see RESETS), reset_next, nil; writes
-- through COMMITS (see prelude).
-- Memory: O(capacity) per client. TTL: period.
ALGORITHMS.sliding_window_log = function(key, now, limit, period, capacity, cost)
  local floor = '(' .. int(now - period)
  local used = redis.call('ZCOUNT', key, floor, '+inf')
  local available = math.max(0, capacity - used)
  local ok = cost <= available
  local retry = 0
  if not ok and cost <= capacity then
    -- The oldest (used + cost - capacity) units in the window must expire.
    local nth = used + cost - capacity - 1
    local entry = redis.call('ZRANGEBYSCORE', key, floor, '+inf',
      'WITHSCORES', 'LIMIT', nth, 1)
    retry = tonumber(entry[2]) + period - now
  end
  return ok, available, retry, nil, period, nil
end

-- Until the newest unit in the window leaves it.
RESETS.sliding_window_log = function(key, now, period)
  local newest = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
  if not newest[2] then return 0 end
  return math.max(0, tonumber(newest[2]) + period - now)
end

COMMITS.sliding_window_log = function(key, now, period, cost)
  redis.call('ZREMRANGEBYSCORE', key, 0, int(now - period))
  local seq = -tonumber(redis.call('ZINCRBY', key, -cost, '#seq'))
  local args = {}
  for i = 1, cost do
    args[#args + 1] = int(now)
    args[#args + 1] = int(seq - cost + i)
    if #args >= 2000 or i == cost then
      redis.call('ZADD', key, unpack(args))
      args = {}
    end
  end
  redis.call('PEXPIRE', key, period)
end
