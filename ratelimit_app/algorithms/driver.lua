-- driver: evaluates many rules in one call, all-or-nothing; concatenated last.
-- KEYS: one state key per rule (distinct keys).
-- ARGV: mode ("hit" or "peek"), now_ms ("" = Redis TIME; a test clock passes
--   milliseconds), then 6 fields per rule: algorithm, limit, period_ms,
--   capacity, cost, shadow ("1" or "0").
-- Returns: {allowed (1/0), then 5 integers per rule: status, remaining,
--   reset_after_ms, retry_after_ms (-1 = never), available}
--   status: 0 consumed, 1 denied, 2 had room but not consumed (another
--   rule blocked, or peek), 3 cost exceeds capacity.
-- A rule that denies blocks the whole call unless it is a shadow rule; when
-- the call is blocked, nothing is consumed, shadow rules included.
local mode = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

local FIELDS = 6
local results = {}
local blocked = false
for i = 1, #KEYS do
  local base = 2 + (i - 1) * FIELDS
  local name = ARGV[base + 1]
  local algorithm = ALGORITHMS[name]
  if not algorithm then
    return redis.error_reply('ratelimit: unknown algorithm ' .. tostring(name))
  end
  local capacity = tonumber(ARGV[base + 4])
  local cost = tonumber(ARGV[base + 5])
  local ok, available, retry, reset_now, reset_next, commit = algorithm(
    KEYS[i], now, tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), capacity, cost)
  local too_big = cost > capacity
  if too_big then ok = false end
  if not ok and ARGV[base + 6] ~= '1' then blocked = true end
  results[i] = {ok, available, retry, reset_now, reset_next, commit, too_big}
end

local consume = mode == 'hit' and not blocked
local reply = {consume and 1 or 0}
if mode == 'peek' then reply[1] = blocked and 0 or 1 end
for i = 1, #KEYS do
  local r = results[i]
  local ok, available, cost = r[1], r[2], tonumber(ARGV[2 + (i - 1) * FIELDS + 5])
  local status, remaining, reset, retry
  if r[7] then
    status, remaining, reset, retry = 3, available, r[4], -1
  elseif not ok then
    status, remaining, reset, retry = 1, available, r[4], r[3]
  elseif consume then
    r[6]()
    status, remaining, reset, retry = 0, available - cost, r[5], 0
  else
    status, remaining, reset, retry = 2, available, r[4], 0
  end
  reply[#reply + 1] = status
  reply[#reply + 1] = remaining
  reply[#reply + 1] = reset
  reply[#reply + 1] = retry
  reply[#reply + 1] = available
end
return reply
