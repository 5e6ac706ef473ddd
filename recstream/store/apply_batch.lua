-- Apply one processed batch to Redis atomically, together with its offset watermarks.
--
-- Why one script: Redis runs it as one unit, so the batch's effect and the watermark that
-- says "offsets up to here are applied" can never be seen apart. The script first checks
-- that every watermark still has the value the worker read: if another worker (after a
-- rebalance) or an earlier run moved it, nothing is written and the worker re-reads the
-- watermarks and drops what is already applied. That check is what makes the state
-- effectively-once (see recstream/store/state.py for the whole argument).
--
-- ARGV[1] is a JSON payload built by recstream/store/state.py; ARGV[2] the binary values that payload.blobs
-- and payload.rankers refer to, concatenated (the blobs first, by where each ends; a ranker state by its first and
-- last byte). Counts, timestamps and trend increments are integers
-- below 2^53, exact as Lua doubles. A number passed to redis.call is sent as '%.17g' (exact:
-- integers print as integers, scores round-trip); only a number put into a string by Lua
-- itself needs string.format (Lua's own conversion is '%.14g'). Key names follow recstream/contracts/keys.py.
--
-- Cost: the script blocks Redis while it runs, and a redis.call costs a few microseconds
-- whatever it does, so every step reads and writes a whole key per call (HMGET, ZMSCORE,
-- SMISMEMBER, multi-field HSET and ZADD, MSET) instead of a call per event, item or segment.
-- A batch then costs O(touched items × segments) hash lookups but O(segments + users) calls; a moved prior adds
-- at most about cfg.rescore_items items (step 4), never the whole catalogue.

local p = cjson.decode(ARGV[1])
local P = p.prefix .. ':'
local cfg = p.cfg

-- 1. watermarks: all or nothing. On a Redis Cluster a batch is one call per slot, each with the slot's own
-- watermarks (recstream/store/state.py): when every one is already at or past its new value, this slot applied
-- the batch before and another did not (a crash between the calls, or a failed-over master that lost a window)
local stale, done = false, true
for _, w in ipairs(p.wm) do
  local current = redis.call('HGET', P .. 'wm', w[1]) or ''
  if current ~= w[2] and not stale then stale = {'stale', w[1], current} end
  if (tonumber(current) or -1) < tonumber(w[3]) then done = false end
end
if stale then
  if done then return {'done'} end
  return stale
end

local function num(x) return tonumber(x) or 0 end
local function fmt(x) return string.format('%.17g', x) end
-- (clicks + m·p) / (views + m), the same IEEE operations as models.ctr.smoothed_ctr
local function ctr(c, v, prior, m) return (c + m * prior) / (v + m) end

-- `cmd key [flag] args...` in chunks: unpack() fails above ~8000 values (an even size keeps pairs
-- whole); the replies of a read are concatenated (a missing value is false, never a hole).
local CHUNK = 4000
local function many(cmd, key, args, flag)
  local out = {}
  for first = 1, #args, CHUNK do
    local last = math.min(first + CHUNK - 1, #args)
    local reply
    if flag then
      reply = redis.call(cmd, key, flag, unpack(args, first, last))
    else
      reply = redis.call(cmd, key, unpack(args, first, last))
    end
    if type(reply) == 'table' then
      for k = 1, #reply do out[#out + 1] = reply[k] end
    end
  end
  return out
end

-- 2.-7. the shared state: counters, rankings, items, pool (the {shared} slot on a cluster; p.shared false: a
-- partition's slot, which holds sections 8 and 9 only)
local q_str, full, graduated = '', false, {}
if p.shared then

-- 2. item metadata and availability (items topic)
local became_available, pooled = {}, {}
for _, it in ipairs(p.meta) do  -- {item, categories, created_ts or '', ts, available '0'/'1', features JSON}
  local key = P .. 'item:' .. it[1]
  redis.call('HSET', key, 'categories', it[2], 'available', it[5], 'features', it[6])
  if it[3] ~= '' then redis.call('HSET', key, 'created_ts', it[3]) else redis.call('HSETNX', key, 'created_ts', it[4]) end
  if it[5] == '0' then
    redis.call('SADD', P .. 'unavailable', it[1])
    redis.call('ZREM', P .. 'rank', it[1])
    for _, s in ipairs(redis.call('SMEMBERS', P .. 'segments')) do redis.call('ZREM', P .. 'rank:' .. s, it[1]) end
    redis.call('ZREM', P .. 'pool', it[1])
  else
    if redis.call('SREM', P .. 'unavailable', it[1]) == 1 then became_available[#became_available + 1] = it[1] end
    -- (re-)enters the pool unless graduated; the age rule below removes it if it is too old
    if redis.call('SISMEMBER', P .. 'graduated', it[1]) == 0 and
       redis.call('ZADD', P .. 'pool', 'NX', redis.call('HGET', key, 'created_ts'), it[1]) == 1 then
      pooled[#pooled + 1] = it[1]
    end
  end
end

-- 3. counters: all-time per item, per segment, and totals (read all, add, write all)
local touched = {}
local touched_list = {}
local function touch(item)
  if not touched[item] then touched[item] = true; touched_list[#touched_list + 1] = item end
end
local names = {}
for k, it in ipairs(p.items) do names[k] = it[1] end  -- p.items: {item, {views, clicks, first_ts}}
local old_views, old_clicks = many('HMGET', P .. 'views', names), many('HMGET', P .. 'clicks', names)
local new_views, views_args, clicks_args = {}, {}, {}
local counts = {}  -- item → {views, clicks} as just written: step 4 scores these without reading them back
for k, it in ipairs(p.items) do
  local item, d = it[1], it[2]
  new_views[k] = num(old_views[k]) + d[1]
  views_args[#views_args + 1] = item  -- even +0: every counted item has a views field
  views_args[#views_args + 1] = new_views[k]
  local new_clicks = num(old_clicks[k]) + d[2]
  if d[2] ~= 0 then
    clicks_args[#clicks_args + 1] = item
    clicks_args[#clicks_args + 1] = new_clicks
  end
  counts[item] = {new_views[k], new_clicks}
  -- an item first counted here, never announced: counted, but hidden (unavailable) until the items topic
  -- announces it; or, without a catalogue feed (cfg.require_announced false), in the pool from now on
  if not old_views[k] and redis.call('HSETNX', P .. 'item:' .. item, 'created_ts', d[3]) == 1 then
    if cfg.require_announced then
      redis.call('HSET', P .. 'item:' .. item, 'available', '0')
      redis.call('SADD', P .. 'unavailable', item)
    else
      redis.call('HSET', P .. 'item:' .. item, 'available', '1')
      redis.call('ZADD', P .. 'pool', 'NX', d[3], item)
    end
  end
  touch(item)
end
many('HSET', P .. 'views', views_args)
many('HSET', P .. 'clicks', clicks_args)
for _, seg in ipairs(p.segs) do  -- {segment, {{item, {views, clicks}}, ...}}
  local key = P .. 'seg:' .. seg[1] .. ':'
  redis.call('SADD', P .. 'segments', seg[1])
  local seg_items = {}
  for k, it in ipairs(seg[2]) do seg_items[k] = it[1] end
  local sv, sc = many('HMGET', key .. 'views', seg_items), many('HMGET', key .. 'clicks', seg_items)
  local sv_args, sc_args = {}, {}
  for k, it in ipairs(seg[2]) do
    sv_args[#sv_args + 1] = it[1]
    sv_args[#sv_args + 1] = num(sv[k]) + it[2][1]
    if it[2][2] ~= 0 then
      sc_args[#sc_args + 1] = it[1]
      sc_args[#sc_args + 1] = num(sc[k]) + it[2][2]
    end
  end
  many('HSET', key .. 'views', sv_args)
  many('HSET', key .. 'clicks', sc_args)
end
for _, t in ipairs(p.totals) do redis.call('HINCRBY', P .. 'totals', t[1], t[2]) end
for _, item in ipairs(became_available) do touch(item) end

-- 4. smoothed-CTR rankings under the quantized global prior (models.ctr.quantize_ctr): the touched items, and
-- when the prior moved, every counted item, but at most about cfg.rescore_items of them per batch: a rescore
-- pass whose HSCAN cursor over `views` is kept in `rescore` (a moved prior restarts it), so no batch costs
-- O(catalogue). Until a pass ends an item's score may be under an older prior; once it ends (a batch, or an
-- empty one when the worker is idle), every score is f(final counters, final prior) again, as a whole rescore
-- in one batch left it (HSCAN returns every field present for the whole pass at least once).
local totals = redis.call('HMGET', P .. 'totals', 'views', 'clicks')
local raw = ctr(num(totals[2]), num(totals[1]), cfg.default_ctr, cfg.default_mass)
local q = math.exp(math.floor(math.log(raw) / cfg.log_step + 0.5) * cfg.log_step)
q_str = fmt(q)
full = redis.call('GET', P .. 'prior') ~= q_str
if full then
  redis.call('SET', P .. 'prior', q_str)
  redis.call('SET', P .. 'rescore', '0')
end
local cursor = redis.call('GET', P .. 'rescore')
if cursor then
  local scan = redis.call('HSCAN', P .. 'views', cursor, 'COUNT', cfg.rescore_items)
  for k = 1, #scan[2], 2 do touch(scan[2][k]) end
  if scan[1] == '0' then redis.call('DEL', P .. 'rescore') else redis.call('SET', P .. 'rescore', scan[1]) end
end
local hidden = many('SMISMEMBER', P .. 'unavailable', touched_list)
local live = {}
for k, item in ipairs(touched_list) do
  if hidden[k] == 0 then live[#live + 1] = item end
end
-- the counters of the items step 3 counted are known; only the others (a rescore pass's, items available again)
-- are read
local unread = {}
for _, item in ipairs(live) do
  if not counts[item] then unread[#unread + 1] = item end
end
local views, clicks = many('HMGET', P .. 'views', unread), many('HMGET', P .. 'clicks', unread)
for k, item in ipairs(unread) do counts[item] = {num(views[k]), num(clicks[k])} end
local global, rank_args = {}, {}
for k, item in ipairs(live) do
  local c = counts[item]
  global[k] = ctr(c[2], c[1], q, cfg.m)
  rank_args[#rank_args + 1] = global[k]
  rank_args[#rank_args + 1] = item
end
many('ZADD', P .. 'rank', rank_args)
-- a segment score leans on the item's global score, so every segment that counts the item moves; its clicks
-- are read only for the items it counts (at x100 a segment counts about half of a batch's items)
for _, s in ipairs(redis.call('SMEMBERS', P .. 'segments')) do
  local sv = many('HMGET', P .. 'seg:' .. s .. ':views', live)
  local counted, at = {}, {}
  for k, item in ipairs(live) do
    if sv[k] then
      counted[#counted + 1] = item
      at[#at + 1] = k
    end
  end
  local sc = many('HMGET', P .. 'seg:' .. s .. ':clicks', counted)
  local args = {}
  for j, item in ipairs(counted) do
    local k = at[j]
    args[#args + 1] = ctr(num(sc[j]), tonumber(sv[k]), global[k], cfg.m)
    args[#args + 1] = item
  end
  many('ZADD', P .. 'rank:' .. s, args)
end

-- 5. trending: fixed-point decayed counts (models.ctr.trend_increment), exact integer sums
for _, t in ipairs(p.trend) do  -- {key suffix, {{item, increment}, ...}}
  local key = P .. 'trend:' .. t[1]
  local trend_items = {}
  for k, it in ipairs(t[2]) do trend_items[k] = it[1] end
  local old = many('ZMSCORE', key, trend_items)
  local args = {}
  for k, it in ipairs(t[2]) do
    args[#args + 1] = num(old[k]) + it[2]
    args[#args + 1] = it[1]
  end
  many('ZADD', key, args)
  redis.call('EXPIRE', key, cfg.trend_ttl_s)
end

-- 6. users of new items until they graduate, for their fold-in (recstream/store/fold_ins.py): user → summed
-- weight, added event by event in order (as models/history.combine_weights: a negative one wins); the first
-- item_users_cap users
local new_items = {}
for k, it in ipairs(p.item_users) do new_items[k] = it[1] end
local done = many('SMISMEMBER', P .. 'graduated', new_items)
for k, it in ipairs(p.item_users) do  -- {item, {{user, {weight, ...}}, ...}}
  if done[k] == 0 then
    local key = P .. 'foldin:users:' .. it[1]
    local users = {}
    for j, u in ipairs(it[2]) do users[j] = u[1] end
    local old = many('HMGET', key, users)
    local size = redis.call('HLEN', key)
    local args = {}
    for j, u in ipairs(it[2]) do
      local r = old[j] and tonumber(old[j])
      if not r and size < cfg.item_users_cap then r, size = 0, size + 1 end
      if r then
        for _, w in ipairs(u[2]) do
          if r >= 0 and w >= 0 then r = r + w else r = math.min(r, 0) + math.min(w, 0) end
        end
        args[#args + 1] = u[1]
        args[#args + 1] = r
      end
    end
    many('HSET', key, args)
  end
end

-- 7. the new-item pool: graduation by views (counted items) or by age (event time); a graduated item
-- with users waits in foldin:pending for its fold-in, and the batch returns every waiting item
local clock = math.max(num(redis.call('GET', P .. 'clock')), p.clock)
redis.call('SET', P .. 'clock', clock)
local function graduate_on_views(items, views)
  local in_pool = many('ZMSCORE', P .. 'pool', items)
  for k, item in ipairs(items) do
    if in_pool[k] and num(views[k]) >= cfg.graduate_views then
      graduated[#graduated + 1] = item
      redis.call('ZREM', P .. 'pool', item)  -- now, so the age rule cannot list it a second time
    end
  end
end
graduate_on_views(names, new_views)
-- an item that entered the pool in step 2 with its views already counted (events applied before its announcement,
-- or before it became available again) is judged on them now: graduation must not depend on which came first
graduate_on_views(pooled, many('HMGET', P .. 'views', pooled))
for _, item in ipairs(redis.call('ZRANGEBYSCORE', P .. 'pool', '-inf', '(' .. string.format('%d', clock - cfg.graduate_age_ms))) do
  graduated[#graduated + 1] = item
end
for _, item in ipairs(graduated) do
  redis.call('ZREM', P .. 'pool', item)
  redis.call('SADD', P .. 'graduated', item)
  if redis.call('EXISTS', P .. 'foldin:users:' .. item) == 1 then redis.call('SADD', P .. 'foldin:pending', item) end
end

end  -- of the shared state

-- 8. per-user state: seen sets (capped, most recent first), segments; then whole values (blobs)
-- (p.seen, p.user_segments and p.eids are JSON objects: each user or partition once, in no particular order; each
-- one's commands touch its own keys only, so the order does not change the state)
for user, items in pairs(p.seen) do  -- {user: {item: ts}}
  local key = P .. 'user:' .. user .. ':seen'
  local args = {}
  for item, ts in pairs(items) do
    args[#args + 1] = ts
    args[#args + 1] = item
  end
  many('ZADD', key, args, 'GT')
  redis.call('ZREMRANGEBYRANK', key, 0, -(cfg.seen_cap + 1))
end
local seg_args = {}
for user, segment in pairs(p.user_segments) do
  seg_args[#seg_args + 1] = user
  seg_args[#seg_args + 1] = segment
end
many('HSET', P .. 'user:seg', seg_args)
-- event ids applied (streams/processor.py drops a user's id seen within the window), one key per partition:
-- kept for the window of arrival time (older ones trimmed); the key expires when the partition is quiet as long
for tp, ids in pairs(p.eids) do  -- {topic:partition: {user:event_id: arrival ms}}
  local key = P .. 'eids:' .. tp
  local args, latest = {}, 0
  for id, at in pairs(ids) do
    args[#args + 1] = at
    args[#args + 1] = id
    if at > latest then latest = at end
  end
  many('ZADD', key, args, 'GT')
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%d', latest - cfg.dedup_window_ms))
  redis.call('PEXPIRE', key, cfg.dedup_window_ms)
end
local blob_args = {}
local values = ARGV[2]
-- p.blobs: key suffixes (user hist/vec/cand/prefs, item similar) in order; p.blob_ends: where each one's value ends
-- in ARGV[2] (it starts after the previous one's): two arrays, not a table per value, which cjson builds for each
local first = 1
for k, suffix in ipairs(p.blobs) do
  local last = p.blob_ends[k]
  blob_args[#blob_args + 1] = P .. suffix
  blob_args[#blob_args + 1] = string.sub(values, first, last)
  first = last + 1
end
for first = 1, #blob_args, CHUNK do
  redis.call('MSET', unpack(blob_args, first, math.min(first + CHUNK - 1, #blob_args)))
end

-- 9. the online ranker's state of each events partition the batch trained (streams/ranker_training.py), and
-- the watermarks: they move with the effect they cover
for _, r in ipairs(p.rankers) do redis.call('SET', r[1], string.sub(values, r[2], r[3])) end  -- {key, first, last}
for _, w in ipairs(p.wm) do redis.call('HSET', P .. 'wm', w[1], w[3]) end
return {'ok', q_str, full and 1 or 0, graduated, p.shared and redis.call('SMEMBERS', P .. 'foldin:pending') or {},
        p.shared and redis.call('EXISTS', P .. 'rescore') or 0}
