-- driver: evaluates many rules in one call, all-or-nothing; concatenated last.
-- KEYS: per rule, where its state lives: its identity's state hash (rules of
--   one identity repeat it), or its own key for an algorithm that COMMITS;
--   then, when usage is counted, the live usage hash of the first rule's
--   shard (see ratelimit_app/usage.py).
-- ARGV: mode ("hit", "peek" or "lease"), now_ms ("" = Redis TIME; a test clock passes
--   milliseconds), usage TTL ms ("" = do not count), offenders kept per shard,
--   the rules' usage group ("" = none; see "Usage" below), then 9 fields per
--   rule: algorithm, limit, period_ms, capacity, cost, shadow ("1" or "0"),
--   scope, field (its state's field in the hash), label (the identity as
--   safe to display); in "lease" mode a 10th: the units wanted (0: not
--   leased; see leases.py).
-- Returns: {allowed (1/0), then 4 integers per rule: status, remaining,
--   reset_after_ms, retry_after_ms (-1 = never)}; in "lease" mode 3 more per
--   rule: units granted (the cost, or more for a leased rule), the lease's
--   mark and horizon_ms (see LEASES in the prelude; 0 and -1 when not leased).
-- "lease" is "hit" where a leased rule that passes consumes min(wanted,
--   available) units (at least its cost); usage counts only the cost: the
--   process counts the units it admits from the lease itself.
--   status: 0 consumed, 1 denied, 2 had room but not consumed (another
--   rule blocked, or peek), 3 cost exceeds capacity.
-- A rule that denies blocks the whole call unless it is a shadow rule; when
-- the call is blocked, nothing is consumed, shadow rules included.
-- Usage (hit mode only): per rule and minute, "a" counts a consumed request,
-- "c" its cost ("u" both, for a cost of 1: one call less), "b" a denial by this enforcing rule, "s" a shadow rule's
-- would-be denial; a rule that had room in a blocked call counts nothing.
-- A call whose rules share one identity and cost 1 each has a usage group
-- (their scopes joined, from Python): when every rule is admitted, the call
-- counts one "g" and one client for the group (count_group), which the
-- drain adds to each scope of it: one HINCRBY and one PFADD per call.
-- A rule that counts adds its identity digest to the (minute, scope)
-- HyperLogLog of distinct clients (so the drain, reading the fields, learns
-- of every HyperLogLog written); a denial adds one to the identity's score
-- in the shard's offenders set (see usage.lua).
local now = tonumber(ARGV[2])
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local mode = ARGV[1]
local leasing = mode == 'lease'
local FIELDS, HEADER = leasing and 10 or 9, 5
local rules = (#ARGV - HEADER) / FIELDS

-- The state of every rule kept in a hash: one HMGET per hash (its DEADLINE
-- first, then its rules' fields). inputs[i]: what rule i's algorithm reads.
local inputs, hashes, rules_of, deadlines = {}, {}, {}, {}
for i = 1, rules do
  if COMMITS[ARGV[HEADER + (i - 1) * FIELDS + 1]] then
    inputs[i] = KEYS[i]
  else
    local key = KEYS[i]
    local of = rules_of[key]
    if not of then
      of = {}
      rules_of[key] = of
      hashes[#hashes + 1] = key
    end
    of[#of + 1] = i
  end
end
for _, key in ipairs(hashes) do
  local of, fields = rules_of[key], {}
  for j, i in ipairs(of) do fields[j] = ARGV[HEADER + (i - 1) * FIELDS + 8] end
  local values = read_state(key, unpack(fields))
  deadlines[key] = tonumber(values[1]) or 0
  for j, i in ipairs(of) do inputs[i] = values[j + 1] end
end

-- Pass 1: every rule's verdict, nothing written. Flat: 6 slots per rule.
local verdicts = {}
local blocked, admitted = false, true
for i = 1, rules do
  local base = HEADER + (i - 1) * FIELDS
  local algorithm = ALGORITHMS[ARGV[base + 1]]
  if not algorithm then
    return redis.error_reply('ratelimit: unknown algorithm ' .. tostring(ARGV[base + 1]))
  end
  local capacity, cost = tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5])
  local ok, available, retry, reset_now, reset_next, state = algorithm(
    inputs[i], now, tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), capacity, cost)
  local status
  status, retry = status_of(ok, cost, capacity, retry)
  if status ~= 0 then
    admitted = false
    if ARGV[base + 6] ~= '1' then blocked = true end
  end
  local v = (i - 1) * 6
  verdicts[v + 1], verdicts[v + 2], verdicts[v + 3] = status, available, retry
  verdicts[v + 4], verdicts[v + 5], verdicts[v + 6] = reset_now or false, reset_next, state
end

-- Usage counters (see usage.lua), hit and lease modes only.
local usage_ttl = mode ~= 'peek' and tonumber(ARGV[3])
local usage_key = KEYS[rules + 1]
local minute = int(math.floor(now / 60000))
local grouped = usage_ttl and mode == 'hit' and admitted and ARGV[5] ~= ''

-- Pass 2: consume from every rule that had room, only if nothing blocked;
-- each hash's new states are written together after it (writes, needed).
local consume = mode ~= 'peek' and not blocked
local reply = {blocked and 0 or 1}
local writes, needed = {}, {}
for i = 1, rules do
  local base, v = HEADER + (i - 1) * FIELDS, (i - 1) * 6
  local status, remaining, retry = verdicts[v + 1], verdicts[v + 2], verdicts[v + 3]
  local reset = verdicts[v + 4]
  local granted, mark, horizon = 0, 0, -1
  if status == 0 and consume then
    local name, cost = ARGV[base + 1], tonumber(ARGV[base + 5])
    local commit = COMMITS[name]
    granted = cost
    local lease = leasing and LEASES[name]
    if lease then
      granted = math.max(cost, math.min(tonumber(ARGV[base + 10]), remaining))
      if granted > cost then  -- the state after taking `granted` units
        local _, _, _, _, reset_next, state = ALGORITHMS[name](inputs[i], now,
          tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4]), granted)
        verdicts[v + 5], verdicts[v + 6] = reset_next, state
      end
      mark = lease.mark(now, tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]),
        tonumber(ARGV[base + 4]), verdicts[v + 6])
      horizon = lease.horizon(now, tonumber(ARGV[base + 3]))
    end
    if commit then
      commit(KEYS[i], now, tonumber(ARGV[base + 3]), cost)
    else
      local key = KEYS[i]
      local updates = writes[key]
      if not updates then
        updates = {}
        writes[key], needed[key] = updates, 0
      end
      updates[#updates + 1] = ARGV[base + 8]
      updates[#updates + 1] = verdicts[v + 6]
      needed[key] = math.max(needed[key], now + verdicts[v + 5])
    end
    remaining, reset = remaining - granted, verdicts[v + 5]
    if usage_ttl and not grouped then
      count_admission(usage_key, minute, ARGV[base + 7], KEYS[i], cost, usage_ttl)
    end
  else
    if status == 0 then status = 2 end
    if not reset then
      reset = RESETS[ARGV[base + 1]](KEYS[i], now, tonumber(ARGV[base + 3]))
    end
    if usage_ttl and (status == 1 or status == 3) then
      count_denial(usage_key, minute, ARGV[base + 7], KEYS[i], ARGV[base + 9],
        ARGV[base + 6] == '1', usage_ttl, tonumber(ARGV[4]))
    end
  end
  reply[#reply + 1] = status
  reply[#reply + 1] = remaining
  reply[#reply + 1] = reset
  reply[#reply + 1] = retry
  if leasing then
    reply[#reply + 1] = granted
    reply[#reply + 1] = mark
    reply[#reply + 1] = horizon
  end
end
for _, key in ipairs(hashes) do
  if writes[key] then store(key, writes[key], needed[key], deadlines[key], now) end
end
if grouped then count_group(usage_key, minute, ARGV[5], KEYS[1], usage_ttl) end
return reply
