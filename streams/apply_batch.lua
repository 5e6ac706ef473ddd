-- Apply one processed batch to Redis atomically, together with its offset watermarks.
--
-- Why one script: Redis runs it as one unit, so the batch's effect and the watermark that
-- says "offsets up to here are applied" can never be seen apart. The script first checks
-- that every watermark still has the value the worker read: if another worker (after a
-- rebalance) or an earlier run moved it, nothing is written and the worker re-reads the
-- watermarks and drops what is already applied. That check is what makes the state
-- effectively-once (see streams/state.py for the whole argument).
--
-- ARGV[1] is a JSON payload built by streams/state.py; ARGV[2..] are binary values that
-- payload.blobs refers to by index. Numbers that must stay exact (counts, offsets, trend
-- increments) arrive as strings; scores leave as '%.17g' strings so no digit is lost.
-- Key names follow recstream/keys.py.

local p = cjson.decode(ARGV[1])
local P = p.prefix .. ':'
local cfg = p.cfg

-- 1. watermarks: all or nothing
for _, w in ipairs(p.wm) do
  local current = redis.call('HGET', P .. 'wm', w[1]) or ''
  if current ~= w[2] then return {'stale', w[1], current} end
end

local function num(x) return tonumber(x) or 0 end
local function fmt(x) return string.format('%.17g', x) end
-- (clicks + m·p) / (views + m), the same IEEE operations as models.ctr.smoothed_ctr
local function ctr(c, v, prior, m) return (c + m * prior) / (v + m) end

-- 2. item metadata and availability (items topic)
local became_available = {}
for _, it in ipairs(p.meta) do  -- {item, categories, created_ts or '', ts, available '0'/'1'}
  local key = P .. 'item:' .. it[1]
  redis.call('HSET', key, 'categories', it[2], 'available', it[5])
  if it[3] ~= '' then redis.call('HSET', key, 'created_ts', it[3]) else redis.call('HSETNX', key, 'created_ts', it[4]) end
  if it[5] == '0' then
    redis.call('SADD', P .. 'unavailable', it[1])
    redis.call('ZREM', P .. 'rank', it[1])
    for _, s in ipairs(redis.call('SMEMBERS', P .. 'segments')) do redis.call('ZREM', P .. 'rank:' .. s, it[1]) end
    redis.call('ZREM', P .. 'pool', it[1])
  else
    if redis.call('SREM', P .. 'unavailable', it[1]) == 1 then became_available[#became_available + 1] = it[1] end
    -- (re-)enters the pool unless graduated; the age rule below removes it if it is too old
    if redis.call('SISMEMBER', P .. 'graduated', it[1]) == 0 then
      redis.call('ZADD', P .. 'pool', 'NX', redis.call('HGET', key, 'created_ts'), it[1])
    end
  end
end

-- 3. counters: all-time per item, per segment, and totals
local touched = {}
local touched_list = {}
local function touch(item)
  if not touched[item] then touched[item] = true; touched_list[#touched_list + 1] = item end
end
for _, it in ipairs(p.items) do  -- {item, views, clicks, first_ts}
  redis.call('HINCRBY', P .. 'views', it[1], it[2])  -- even +0: every counted item has a views field
  if it[3] ~= '0' then redis.call('HINCRBY', P .. 'clicks', it[1], it[3]) end
  -- an item first seen in an event joins the pool, as if announced at that moment
  if redis.call('HSETNX', P .. 'item:' .. it[1], 'created_ts', it[4]) == 1 then
    redis.call('HSET', P .. 'item:' .. it[1], 'available', '1')
    redis.call('ZADD', P .. 'pool', 'NX', it[4], it[1])
  end
  touch(it[1])
end
for _, it in ipairs(p.segs) do  -- {segment, item, views, clicks}
  redis.call('SADD', P .. 'segments', it[1])
  redis.call('HINCRBY', P .. 'seg:' .. it[1] .. ':views', it[2], it[3])
  if it[4] ~= '0' then redis.call('HINCRBY', P .. 'seg:' .. it[1] .. ':clicks', it[2], it[4]) end
end
for _, t in ipairs(p.totals) do redis.call('HINCRBY', P .. 'totals', t[1], t[2]) end
for _, item in ipairs(became_available) do touch(item) end

-- 4. smoothed-CTR rankings under the quantized global prior (models.ctr.quantize_ctr)
local tv = num(redis.call('HGET', P .. 'totals', 'views'))
local tc = num(redis.call('HGET', P .. 'totals', 'clicks'))
local raw = ctr(tc, tv, cfg.default_ctr, cfg.default_mass)
local q = math.exp(math.floor(math.log(raw) / cfg.log_step + 0.5) * cfg.log_step)
local q_str = fmt(q)
local full = redis.call('GET', P .. 'prior') ~= q_str
if full then
  redis.call('SET', P .. 'prior', q_str)
  touched_list = redis.call('HKEYS', P .. 'views')
end
local segments = redis.call('SMEMBERS', P .. 'segments')
for _, item in ipairs(touched_list) do
  if redis.call('SISMEMBER', P .. 'unavailable', item) == 0 then
    local g = ctr(num(redis.call('HGET', P .. 'clicks', item)), num(redis.call('HGET', P .. 'views', item)), q, cfg.m)
    redis.call('ZADD', P .. 'rank', fmt(g), item)
    for _, s in ipairs(segments) do
      local sv = redis.call('HGET', P .. 'seg:' .. s .. ':views', item)
      if sv then
        local sc = num(redis.call('HGET', P .. 'seg:' .. s .. ':clicks', item))
        redis.call('ZADD', P .. 'rank:' .. s, fmt(ctr(sc, tonumber(sv), g, cfg.m)), item)
      end
    end
  end
end

-- 5. trending: fixed-point decayed counts (models.ctr.trend_increment), exact integer sums
local expiring = {}
for _, t in ipairs(p.trend) do  -- {key suffix, item, increment}
  redis.call('ZINCRBY', P .. 'trend:' .. t[1], t[3], t[2])
  expiring[t[1]] = true
end
for suffix, _ in pairs(expiring) do redis.call('EXPIRE', P .. 'trend:' .. suffix, cfg.trend_ttl_s) end

-- 6. the new-item pool: graduation by views (touched items) or by age (event time)
local clock = math.max(num(redis.call('GET', P .. 'clock')), num(p.clock))
redis.call('SET', P .. 'clock', string.format('%d', clock))
local graduated = {}
for _, it in ipairs(p.items) do
  if redis.call('ZSCORE', P .. 'pool', it[1]) and num(redis.call('HGET', P .. 'views', it[1])) >= cfg.graduate_views then
    graduated[#graduated + 1] = it[1]
  end
end
for _, item in ipairs(redis.call('ZRANGEBYSCORE', P .. 'pool', '-inf', '(' .. string.format('%d', clock - cfg.graduate_age_ms))) do
  graduated[#graduated + 1] = item
end
for _, item in ipairs(graduated) do
  redis.call('ZREM', P .. 'pool', item)
  redis.call('SADD', P .. 'graduated', item)
end

-- 7. per-user state: seen sets (capped, most recent first), segments; then whole values (blobs)
local capped = {}
for _, s in ipairs(p.seen) do  -- {user, item, ts}
  redis.call('ZADD', P .. 'user:' .. s[1] .. ':seen', 'GT', s[3], s[2])
  capped[s[1]] = true
end
for user, _ in pairs(capped) do
  redis.call('ZREMRANGEBYRANK', P .. 'user:' .. user .. ':seen', 0, -(cfg.seen_cap + 1))
end
for _, u in ipairs(p.user_segments) do redis.call('HSET', P .. 'user:seg', u[1], u[2]) end
for _, b in ipairs(p.blobs) do  -- {key suffix, argv index}: user hist/vec/cand/prefs, item similar
  redis.call('SET', P .. b[1], ARGV[b[2]])
end

-- 8. the watermarks move with the effect they cover
for _, w in ipairs(p.wm) do redis.call('HSET', P .. 'wm', w[1], w[3]) end
return {'ok', q_str, full and 1 or 0, graduated}
