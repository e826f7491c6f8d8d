"""The Lua scripts of the limiter (docs/limits.md): each runs atomically in Redis, with Redis's
clock, over keys that all carry the hash tag `{rl}` (one Cluster slot)."""

TAG = "{rl}"  # every limiter key starts with it: one Cluster slot, so a script may touch them all

# KEYS: one hash per window, then two keys per budget (its hash and its holds), then (with
# budgets) the registry of expired holds (EXPIRED). ARGV: the number
# of windows, per window its limit, length (ms) and amount; then per budget its limit, the hold,
# the hold's lifetime (ms), the hold's member ("<request id>:<hold>") and the hash's TTL (s, 0:
# none). Answers {1, now, used_1, reset_1, ..., gen_1, ...} (used includes this request), or
# {0, now, i, used_i, wait_i} for the first window i it would overflow (wait -1: the amount alone
# is over the limit), {2, j} when budget j's hash must be seeded first, or {3, j, used_j} when
# budget j cannot hold this request. A refusal counts nothing anywhere.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nw = tonumber(ARGV[1])
local used, oldest = {}, {}
for i = 1, nw do
  local limit, win, amount = tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1])
  local step = win / 60
  local cur = math.floor(now / step)
  local fields = redis.call('HGETALL', KEYS[i])
  local sum, buckets, stale = 0, {}, {}
  for j = 1, #fields, 2 do
    local idx, v = tonumber(fields[j]), tonumber(fields[j+1])
    if idx <= cur - 60 then stale[#stale+1] = fields[j] else sum = sum + v; buckets[#buckets+1] = {idx, v} end
  end
  if #stale > 0 then redis.call('HDEL', KEYS[i], unpack(stale)) end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  if sum + amount > limit then
    local freed, wait = 0, -1
    for _, b in ipairs(buckets) do
      freed = freed + b[2]
      if sum - freed + amount <= limit then wait = (b[1] + 60) * step - now; break end
    end
    return {0, now, i, sum, wait}
  end
  used[i] = sum
  oldest[i] = cur
  if #buckets > 0 then oldest[i] = buckets[1][1] end
end
local base = 3 * nw + 2
local nb = tonumber(ARGV[base])
local gens = {}
for j = 1, nb do
  local key, holds = KEYS[nw + 2*j - 1], KEYS[nw + 2*j]
  local a = base + 5 * (j - 1)
  local limit, hold = tonumber(ARGV[a+1]), tonumber(ARGV[a+2])
  local gen = redis.call('HGET', key, 'gen')
  if not gen then return {2, j} end
  gens[j] = gen
  -- Holds whose worker died count as spent at their worst case, and are noted in the registry
  -- (the last key) for the reconciler to correct to their true cost once the ledger has it.
  local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
  for _, member in ipairs(expired) do
    local amount = tonumber(string.match(member, ':(%d+)$')) or 0
    redis.call('HINCRBY', key, 'held', -amount)
    redis.call('HINCRBY', key, 'spent', amount)
    redis.call('HSET', KEYS[#KEYS], key .. '|' .. member, gen .. '|' .. now)
  end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', holds, '-inf', now) end
  local spent = tonumber(redis.call('HGET', key, 'spent') or '0')
  local held = tonumber(redis.call('HGET', key, 'held') or '0')
  if spent + held + hold > limit then return {3, j, spent + held} end
end
local out = {1, now}
for i = 1, nw do
  local win, amount = tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1])
  local step = win / 60
  local cur = math.floor(now / step)
  if amount > 0 then redis.call('HINCRBY', KEYS[i], cur, amount) end
  redis.call('PEXPIRE', KEYS[i], win + step)
  if amount > 0 and used[i] == 0 then oldest[i] = cur end
  out[#out+1] = used[i] + amount
  out[#out+1] = (oldest[i] + 60) * step - now
end
for j = 1, nb do
  local key, holds = KEYS[nw + 2*j - 1], KEYS[nw + 2*j]
  local a = base + 5 * (j - 1)
  local hold, life, member, ttl = tonumber(ARGV[a+2]), tonumber(ARGV[a+3]), ARGV[a+4], tonumber(ARGV[a+5])
  redis.call('HINCRBY', key, 'held', hold)
  redis.call('ZADD', holds, now + life, member)
  if ttl > 0 then redis.call('EXPIRE', key, ttl); redis.call('EXPIRE', holds, ttl) end
  out[#out+1] = gens[j]
end
return out
"""

# KEYS: a budget's hash. ARGV: its seeded spend (micro-USD), a new generation and the TTL (s, 0:
# none). Seeds only a hash that is not there (another worker may have seeded it meanwhile).
SEED = """
if redis.call('HEXISTS', KEYS[1], 'gen') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'held', 0, 'gen', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""

# KEYS: per settled budget hold, its hash and its holds, then the registry of expired holds.
# ARGV: per hold, the generation it was
# admitted in, its member, its amount and the true cost (micro-USD). A hold still there is
# released and the true cost spent; a hold that expired (counted as spent at its amount) is
# corrected to the true cost; in a hash seeded since (Redis lost the one it was held in), only the
# true cost is added; with no hash at all, PostgreSQL already has it for the next seeding.
RELEASE = """
for j = 1, (#KEYS - 1) / 2 do
  local key, holds = KEYS[2*j - 1], KEYS[2*j]
  local gen, member = ARGV[4*j - 3], ARGV[4*j - 2]
  local hold, cost = tonumber(ARGV[4*j - 1]), tonumber(ARGV[4*j])
  local current = redis.call('HGET', key, 'gen')
  if current == gen then
    if redis.call('ZREM', holds, member) == 1 then
      redis.call('HINCRBY', key, 'held', -hold)
      redis.call('HINCRBY', key, 'spent', cost)
    elseif redis.call('HDEL', KEYS[#KEYS], key .. '|' .. member) == 1 then
      -- Expired (counted at its worst case) and not reconciled yet: the truth replaces it.
      redis.call('HINCRBY', key, 'spent', cost - hold)
    end
  elseif current then
    redis.call('HINCRBY', key, 'spent', cost)
  end
end
return 1
"""

# KEYS: windows to correct (a key may repeat). ARGV: per key, its bucket length (ms), the bucket
# its request was counted in, and the correction. A bucket that has left its window is not touched.
SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  local step, idx, delta = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  if idx > math.floor(now / step) - 60 then
    local left = redis.call('HINCRBY', KEYS[i], ARGV[3*i-1], delta)
    if left <= 0 then redis.call('HDEL', KEYS[i], ARGV[3*i-1]) end
  end
end
return 1
"""

# The registry of expired holds: field "<budget hash>|<member>", value "<generation>|<when, ms>".
EXPIRED = TAG + ":expired"

# KEYS: a budget's hash, the registry. ARGV: the registry field, the hold's generation, its amount
# and the true amount. Corrects an expired hold to the truth, once (the release of a worker that
# was only slow may have done it already); answers 1 when it did.
RECONCILE = """
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'gen') == ARGV[2] then
  redis.call('HINCRBY', KEYS[1], 'spent', tonumber(ARGV[4]) - tonumber(ARGV[3]))
end
return 1
"""
