"""The store's Lua scripts: each runs as one unit on one Redis (on a cluster, every key it touches
carries the same hash tag: funnel/live/schema.py), so a batch is checked before anything is written."""

# Room in the log for `wanted` more entries. Exported entries older than the retention go first;
# when that is not room enough, every exported entry; an entry the export has not read, never.
ROOM_FUNCTION = """
local function room(stream, exported_key, wanted, now, retention, max_events)
  local exported = redis.call('HGET', exported_key, 'id')
  if exported then
    local ms, sq = string.match(exported, '^(%d+)-(%d+)$')
    local after = ms .. '-' .. string.format('%.0f', tonumber(sq) + 1)
    local cutoff = now - retention
    if cutoff < tonumber(ms) then
      redis.call('XTRIM', stream, 'MINID', string.format('%.0f', cutoff) .. '-0')
    else
      redis.call('XTRIM', stream, 'MINID', after)
    end
    if redis.call('XLEN', stream) + wanted > max_events then
      redis.call('XTRIM', stream, 'MINID', after)
    end
  end
  return redis.call('XLEN', stream) + wanted <= max_events
end
"""

# KEYS: the stream, the sequence, the export checkpoint, then per event its idempotency key, the
# user's state key and the user's quota counter for this window. ARGV: 13 settings (the last: 1 to
# check only, write nothing), then 8 fields per event. Returns {recorded, duplicates}; or, with
# nothing written, {-1, i} when event i reuses an id with another payload, {-2, entries} when the
# log is full, {-3, i} when event i's user is over quota.
RECORD_SCRIPT = (
    ROOM_FUNCTION
    + """
local idem_ttl, recent_cap, dismissed_cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local served_ttl, served_cap, user_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now, client, max_events, retention = tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
local user_cap, window, check_only = tonumber(ARGV[11]), tonumber(ARGV[12]), ARGV[13] == '1'
local n = (#KEYS - 3) / 3
local fresh, wanted, per_user, first_of = {}, 0, {}, {}
for i = 0, n - 1 do
  local seen = redis.call('GET', KEYS[4 + 3 * i])
  if seen then
    if seen ~= ARGV[13 + i * 8 + 8] then return {-1, i} end
  else
    fresh[i] = true
    wanted = wanted + 1
    local quota = KEYS[6 + 3 * i]
    per_user[quota] = (per_user[quota] or 0) + 1
    if first_of[quota] == nil then first_of[quota] = i end
  end
end
if user_cap > 0 then
  for quota, count in pairs(per_user) do
    if tonumber(redis.call('GET', quota) or '0') + count > user_cap then return {-3, first_of[quota]} end
  end
end
if wanted > 0 and not room(KEYS[1], KEYS[3], wanted, now, retention, max_events) then
  return {-2, redis.call('XLEN', KEYS[1])}
end
if check_only then return {wanted, n - wanted} end
for quota, count in pairs(per_user) do
  redis.call('INCRBY', quota, count)
  redis.call('PEXPIRE', quota, window)
end
for i = 0, n - 1 do
  if fresh[i] then
    local a = 13 + i * 8
    local id, user, item, kind = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
    local ts, value, group = tonumber(ARGV[a + 5]), ARGV[a + 6], ARGV[a + 7]
    redis.call('SET', KEYS[4 + 3 * i], ARGV[a + 8], 'EX', idem_ttl)
    redis.call('XADD', KEYS[1], '*', 'seq', redis.call('INCR', KEYS[2]), 'client', client,
      'event_id', id, 'user_id', user, 'item_id', item, 'type', kind, 'ts', ARGV[a + 5], 'value', value)
    local key = KEYS[5 + 3 * i]
    -- GT: an event replayed late never moves an item back in time.
    if group == 'recent' then
      redis.call('ZADD', key, 'GT', ts, item)
      redis.call('ZREMRANGEBYRANK', key, 0, -recent_cap - 1)
      redis.call('PEXPIRE', key, user_ttl)
    elseif group == 'dismissed' then
      redis.call('ZADD', key, 'GT', ts, item)
      redis.call('ZREMRANGEBYRANK', key, 0, -dismissed_cap - 1)
      redis.call('PEXPIRE', key, user_ttl)
    elseif ts > now - served_ttl then
      redis.call('ZADD', key, 'GT', ts, item)
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now - served_ttl)
      redis.call('ZREMRANGEBYRANK', key, 0, -served_cap - 1)
      redis.call('PEXPIRE', key, served_ttl)
    end
  end
end
return {wanted, n - wanted}
"""
)

# What the gateway served. KEYS: the stream, the sequence, the export checkpoint, the log's bounds,
# then each answer's served key. ARGV: now, served TTL and cap, then per answer: client, user, the
# items joined by newlines, the request id. The served sets are always updated; the answers go to
# the log while it has room under the bounds the events service set. Returns {logged, not logged}.
SERVED_SCRIPT = (
    ROOM_FUNCTION
    + """
local now, served_ttl, served_cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_events = tonumber(redis.call('HGET', KEYS[4], 'max_events') or '0')
local retention = tonumber(redis.call('HGET', KEYS[4], 'retention_ms') or '0')
local n = #KEYS - 4
local logging = max_events > 0 and room(KEYS[1], KEYS[3], n, now, retention, max_events)
for i = 1, n do
  local a = 3 + (i - 1) * 4
  local key, items = KEYS[4 + i], {}
  for item in string.gmatch(ARGV[a + 3], '[^\\n]+') do
    items[#items + 1] = now
    items[#items + 1] = item
  end
  redis.call('ZADD', key, 'GT', unpack(items))
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - served_ttl)
  redis.call('ZREMRANGEBYRANK', key, 0, -served_cap - 1)
  redis.call('PEXPIRE', key, served_ttl)
  if logging then
    redis.call('XADD', KEYS[1], '*', 'seq', redis.call('INCR', KEYS[2]), 'client', ARGV[a + 1],
      'event_id', ARGV[a + 4], 'user_id', ARGV[a + 2], 'item_id', ARGV[a + 3], 'type', 'impression',
      'ts', ARGV[1], 'value', '0')
  end
end
if logging then return {n, 0} end
return {0, n}
"""
)

# One script, so a read is one command: cheaper for the client than a pipeline of three.
# KEYS: recent, dismissed, served; ARGV: how many of each, the oldest served time still in.
READ_SCRIPT = """
local recent = redis.call('ZRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
local dismissed = redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[2]) - 1)
local served = {}
if tonumber(ARGV[3]) > 0 then
  served = redis.call('ZREVRANGEBYSCORE', KEYS[3], '+inf', ARGV[4], 'LIMIT', 0, tonumber(ARGV[3]))
end
return {recent, dismissed, served}
"""
