-- usage: the usage counters both drivers write (see ratelimit_app/usage.py);
-- concatenated before the driver. `hash` is the shard's live usage hash (in
-- KEYS), `minute` the minute of Redis TIME as a string, `ttl` its TTL in ms.
-- The HyperLogLog of distinct clients and the offenders set hold the minute
-- in their names, so they are named here after the hash (same hash tag, so
-- the same Redis Cluster slot).

local function count_usage(hash, minute, scope, metric, amount, ttl)
  local field = minute .. '|' .. scope .. '|' .. metric
  if redis.call('HINCRBY', hash, field, amount) == amount then
    redis.call('PEXPIRE', hash, ttl)
  end
end

-- The identity digest of a state key: <prefix>{s<N>}:<digest>:<scope>:<alg>.
local function identity_of(key)
  return string.match(key, '}:([^:]+)')
end

local function count_client(hash, minute, scope, key, ttl)
  local hll = hash .. ':hll:' .. minute .. '|' .. scope
  if redis.call('PFADD', hll, identity_of(key)) == 1 then
    redis.call('PEXPIRE', hll, ttl)
  end
end

-- A consumed request: "u" for a cost of 1 (allowed and cost in one call),
-- else "a" and "c"; and its client.
local function count_admission(hash, minute, scope, key, cost, ttl)
  if cost == 1 then
    count_usage(hash, minute, scope, 'u', 1, ttl)
  else
    count_usage(hash, minute, scope, 'a', 1, ttl)
    count_usage(hash, minute, scope, 'c', cost, ttl)
  end
  count_client(hash, minute, scope, key, ttl)
end

-- Every rule of a call admitted at a cost of 1, all for one identity: one
-- "g" field (a "u" for each scope of the group) and one HyperLogLog, named
-- apart from the scopes' own, for the call's scopes together (`group`: the
-- scopes joined by the separator of usage.py, which the drain splits).
local function count_group(hash, minute, group, key, ttl)
  count_usage(hash, minute, group, 'g', 1, ttl)
  local hll = hash .. ':hllg:' .. minute .. '|' .. group
  if redis.call('PFADD', hll, identity_of(key)) == 1 then
    redis.call('PEXPIRE', hll, ttl)
  end
end

-- A denial by an enforcing rule ("b") or a shadow rule's would-be denial
-- ("s"): its client, and one more for the identity in the shard's offenders
-- set, which drops its lowest member beyond `kept`.
local function count_denial(hash, minute, scope, key, label, shadow, ttl, kept)
  count_usage(hash, minute, scope, shadow and 's' or 'b', 1, ttl)
  count_client(hash, minute, scope, key, ttl)
  local top = hash .. ':top'
  local member = minute .. '|' .. identity_of(key) .. '|' .. label .. '|' .. scope
  if tonumber(redis.call('ZINCRBY', top, 1, member)) == 1 then
    redis.call('PEXPIRE', top, ttl)
    if redis.call('ZCARD', top) > kept then
      redis.call('ZPOPMIN', top)
    end
  end
end
