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
# A window's hash holds its buckets (index -> amount, every amount above 0), their sum ('s') and
# the index of the oldest ('lo'); every script that writes a bucket (ADMIT, SETTLE) keeps the two
# up to date, so admitting reads two fields, not the whole window. These functions are part of both.
_WINDOW_FUNCTIONS = """
local function set_oldest(key, lo)
  if lo then redis.call('HSET', key, 'lo', lo) else redis.call('HDEL', key, 'lo') end
  return lo
end
-- The first bucket from `first` to `last` that holds something becomes the oldest (none: no 'lo').
local function find_oldest(key, first, last)
  for idx = first, last do
    if redis.call('HEXISTS', key, idx) == 1 then return set_oldest(key, idx) end
  end
  return set_oldest(key, nil)
end
"""

ADMIT = _WINDOW_FUNCTIONS + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nw = tonumber(ARGV[1])
local used, oldest = {}, {}
-- rebuild() recounts a hash from its buckets (one written before the sum was kept, or far
-- behind); slide() drops the buckets that left the window, the oldest first, and finds the next.
local function rebuild(key, cur)
  local fields = redis.call('HGETALL', key)
  local sum, lo, stale = 0, nil, {}
  for j = 1, #fields, 2 do
    local idx = tonumber(fields[j])
    if idx then
      if idx <= cur - 60 then
        stale[#stale+1] = fields[j]
      else
        sum = sum + tonumber(fields[j+1])
        if not lo or idx < lo then lo = idx end
      end
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  if #fields > 0 then
    redis.call('HSET', key, 's', sum)
    set_oldest(key, lo)
  end
  return sum, lo
end
local function slide(key, sum, lo, cur)
  local names = {}
  for idx = lo, cur - 60 do names[#names+1] = idx end
  local values = redis.call('HMGET', key, unpack(names))
  local gone = {}
  for n = 1, #names do
    if values[n] then sum = sum - tonumber(values[n]); gone[#gone+1] = names[n] end
  end
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
  local next_lo = find_oldest(key, cur - 59, cur)
  if not next_lo then sum = 0 end
  redis.call('HSET', key, 's', sum)
  return sum, next_lo
end
for i = 1, nw do
  local key, limit, win, amount = KEYS[i], tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1])
  local step = math.floor(win / 60)
  local cur = math.floor(now / step)
  local meta = redis.call('HMGET', key, 's', 'lo')
  local sum, lo = tonumber(meta[1]), tonumber(meta[2])
  if not sum or (lo and cur - 60 - lo >= 120) then
    sum, lo = rebuild(key, cur)
  elseif lo and lo <= cur - 60 then
    sum, lo = slide(key, sum, lo, cur)
  end
  if sum + amount > limit then
    local freed, wait = 0, -1
    if lo then
      local names = {}
      for idx = lo, cur do names[#names+1] = idx end
      local values = redis.call('HMGET', key, unpack(names))
      for n = 1, #names do
        if values[n] then
          freed = freed + tonumber(values[n])
          if sum - freed + amount <= limit then wait = (names[n] + 60) * step - now; break end
        end
      end
    end
    return {0, now, i, sum, wait}
  end
  used[i] = sum
  oldest[i] = lo
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
  local step = math.floor(win / 60)
  local cur = math.floor(now / step)
  if amount > 0 then
    redis.call('HINCRBY', KEYS[i], cur, amount)
    redis.call('HINCRBY', KEYS[i], 's', amount)
    if not oldest[i] then redis.call('HSET', KEYS[i], 'lo', cur) end
  end
  redis.call('PEXPIRE', KEYS[i], win + step)
  out[#out+1] = used[i] + amount
  out[#out+1] = ((oldest[i] or cur) + 60) * step - now
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
SETTLE = _WINDOW_FUNCTIONS + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  local step, idx, delta = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  -- A window gone (expired) stays gone: a correction never recreates it without its TTL.
  if idx > math.floor(now / step) - 60 and redis.call('EXISTS', KEYS[i]) == 1 then
    local left = redis.call('HINCRBY', KEYS[i], ARGV[3*i-1], delta)
    local kept = redis.call('HEXISTS', KEYS[i], 's') == 1  -- else the next admission recounts it
    if left <= 0 then
      redis.call('HDEL', KEYS[i], ARGV[3*i-1])
      if kept then
        redis.call('HINCRBY', KEYS[i], 's', delta - left)
        if tonumber(redis.call('HGET', KEYS[i], 'lo')) == idx then  -- the oldest is gone: the next
          find_oldest(KEYS[i], idx + 1, math.floor(now / step))
        end
      end
    elseif kept then
      redis.call('HINCRBY', KEYS[i], 's', delta)
      local lo = tonumber(redis.call('HGET', KEYS[i], 'lo'))
      if not lo or idx < lo then redis.call('HSET', KEYS[i], 'lo', idx) end
    end
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
