-- give_back: takes a process's unused leased units back (see leases.py);
-- concatenated last, after the prelude and the leased rule's algorithm.
-- KEYS: the rule's state hash.
-- ARGV: now_ms ("" = Redis TIME), algorithm, limit, period_ms, capacity,
--   units unused, the mark the grant returned, the rule's field in the hash.
-- Returns: the units taken back (0 when the algorithm cannot take them back
--   safely, e.g. a fixed window that has ended).
local now = tonumber(ARGV[1])
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local lease = LEASES[ARGV[2]]
if not lease then
  return redis.error_reply('ratelimit: cannot lease ' .. tostring(ARGV[2]))
end
return lease.give_back(KEYS[1], ARGV[8], now, tonumber(ARGV[3]), tonumber(ARGV[4]),
  tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
