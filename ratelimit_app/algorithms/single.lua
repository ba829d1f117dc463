-- single: one rule in "hit" or "peek" mode, decided as driver.lua decides it
-- but without its loops and tables: the common call (one policy, hit, peek).
-- KEYS, ARGV and the reply: driver.lua's, with one rule.
local now = tonumber(ARGV[2])
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local key, name = KEYS[1], ARGV[5]
local algorithm = ALGORITHMS[name]
if not algorithm then
  return redis.error_reply('ratelimit: unknown algorithm ' .. tostring(name))
end
local commit = COMMITS[name]
local input, deadline = key, 0
if not commit then  -- a field of the identity's state hash, and its DEADLINE
  local values = read_state(key, ARGV[12])
  deadline, input = tonumber(values[1]) or 0, values[2]
end
local period, capacity, cost = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local ok, remaining, retry, reset, reset_next, state = algorithm(
  input, now, tonumber(ARGV[6]), period, capacity, cost)
local status
status, retry = status_of(ok, cost, capacity, retry)
local shadow = ARGV[10] == '1'
local blocked = status ~= 0 and not shadow
local hit = ARGV[1] == 'hit'
local ttl = hit and tonumber(ARGV[3])
local minute = ttl and int(math.floor(now / 60000))
if status == 0 and hit then
  if commit then
    commit(key, now, period, cost)
  else
    store(key, {ARGV[12], state}, now + reset_next, deadline, now)
  end
  remaining, reset = remaining - cost, reset_next
  if ttl then count_admission(KEYS[2], minute, ARGV[11], key, cost, ttl) end
else
  if status == 0 then status = 2 end
  if not reset then reset = RESETS[name](key, now, period) end
  if ttl and status ~= 2 then
    count_denial(KEYS[2], minute, ARGV[11], key, ARGV[13], shadow, ttl, tonumber(ARGV[4]))
  end
end
return {blocked and 0 or 1, status, remaining, reset, retry}
