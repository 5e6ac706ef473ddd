-- Apply one processed batch to Redis atomically, together with its offset watermarks.
--
-- Why one script: Redis runs it as one unit, so the batch's effect and the watermark that
-- says "offsets up to here are applied" can never be seen apart. The script first checks
-- that every watermark still has the value the worker read: if another worker (after a
-- rebalance) or an earlier run moved it, nothing is written and the worker re-reads the
-- watermarks and drops what is already applied. That check is what makes the state
-- effectively-once (see recstream/store/state.py for the whole argument).
--
-- Erased users (the slot's `erased` set, recstream/store/erasure.py): nothing is written under their ids (their
-- seen sets, segments, histories, vectors, candidates, preferences, fold-in fields), whenever their events were
-- published; their events still count in the counters, rankings and trends, which name nobody (step 1c).
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
-- A batch then costs O(touched items) hash lookups and O(segments + users) calls; a moved prior adds at most about
-- cfg.rescore_items items (step 4), never the whole catalogue. The per-segment rankings, O(items × segments), are
-- rescored only in the calls that ask for it (p.rank_segments: about twice a second, streams/processor.py), for
-- at most max(cfg.rescore_items, the batch's touched items) of the items waiting in `segments:rescore`.
--
-- Nothing may fail once written: Redis does not undo a script's writes when a later command raises (WRONGTYPE, a
-- score that is no float), so the writes before it would stay without their watermark and the worker's retry
-- would apply them again (counters counted twice). Step 1b checks, before the first write, what a later command
-- could refuse, and refuses the batch with an error starting 'RECSTREAM_STATE' and nothing written
-- (streams/processor.py counts it as the worker's own failure, which /healthz shows, not as one waiting cures).

local p = cjson.decode(ARGV[1])
local P = p.prefix .. ':'
local cfg = p.cfg

-- a stored number read after the first write (steps 4 and 7): one that is not finite counts as 0, as one that is
-- no number always did, so it cannot make a score NaN (x - x is 0 for a finite number only)
local function num(x)
  x = tonumber(x)
  if x and x - x == 0 then return x end
  return 0
end
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

-- HMGET's answer (a missing field is false). A small hash is kept as a list (a listpack, up to
-- hash-max-listpack-entries fields: 512 by default) that HMGET scans once per field asked, O(n) each: asking
-- for a batch's items in a per-segment clicks hash cost more than the rest of the script. When the fields asked
-- are at least as many as the hash holds, one HGETALL (O(n)) and a Lua table answer the same in O(n + m).
local function hmget(key, fields)  -- the values, and the hash's size when it was read (nil for no fields)
  if #fields == 0 then return {} end
  local size = redis.call('HLEN', key)
  if size > #fields then return many('HMGET', key, fields), size end
  local held = {}
  if size > 0 then
    local all = redis.call('HGETALL', key)
    for k = 1, #all, 2 do held[all[k]] = all[k + 1] end
  end
  local out = {}
  for k = 1, #fields do out[k] = held[fields[k]] or false end
  return out, size
end

-- A check refuses with an error, caught below (checked) and answered as a 'RECSTREAM_STATE' error reply before
-- anything of the batch is written; so is any error of the checks themselves (a payload value of the wrong type).
-- An error Redis answered a command of the checks with (CLUSTERDOWN, OOM) is answered as Redis said it: the worker
-- files it under what Redis said, and nothing was written either.
-- The checks run per user, item and event on the hot path: each is inline arithmetic where it can be, and a
-- message is joined only when one fails. x - x == 0 holds for a finite number only (NaN and ±inf give NaN), as
-- does x - x + x == x, which a numeric string fails too (== does not convert); other values raise, and refuse.
local function refuse(why) error({refused = why}, 0) end
local function checked(step)
  local ok, err = pcall(step)
  if ok then return nil end
  if type(err) == 'table' and err.err then return err end  -- Redis's own error (CLUSTERDOWN, OOM …), as it said it
  local why = type(err) == 'table' and err.refused or ('the batch is malformed: ' .. tostring(err))
  return redis.error_reply('RECSTREAM_STATE ' .. why .. '; nothing of the batch was written')
end
local function quoted(x)
  if type(x) == 'string' then return '"' .. string.sub(x, 1, 40) .. '"' end
  return tostring(x)
end
local function typed(key, kind)  -- one TYPE: `key` holds a `kind` or nothing
  local found = redis.call('TYPE', key).ok
  if found ~= kind and found ~= 'none' then refuse(key .. ' is a ' .. found .. ', expected a ' .. kind) end
end
local kinds = {}  -- a shared key → the type expected of it, so each is asked once
local function expect(key, kind)
  local known = kinds[key]
  if known == nil then
    typed(key, kind)
    kinds[key] = kind
  elseif known ~= kind then  -- two names meet in one key (an id spelling another key's name)
    refuse(key .. ' would be used as a ' .. known .. ' and as a ' .. kind)
  end
end
local function finite(x, what)
  if type(x) ~= 'number' or x - x ~= 0 then refuse(what .. ' is ' .. quoted(x) .. ', expected a finite number') end
  return x
end
local BOUND = 2 ^ 53  -- an integer Lua holds exactly and a command's integer argument takes whole
local function integer(x, what, low)
  if finite(x, what) ~= math.floor(x) or x < low or x >= BOUND then
    refuse(what .. ' is ' .. fmt(x) .. ', expected an integer from ' .. fmt(low) .. ' below 2^53')
  end
  return x
end
local function text(x, what)
  if type(x) ~= 'string' then refuse(what .. ' is ' .. quoted(x) .. ', expected a string') end
  return x
end
-- a counter pair and what the batch adds to it (step 3 writes the sums), refused unless both sums are finite;
-- `what` and `name` are joined only for the message
local function added(what, name, held_v, held_c, dv, dc)
  local v, c = (tonumber(held_v) or 0) + dv, (tonumber(held_c) or 0) + dc
  if v - v ~= 0 or c - c ~= 0 then
    refuse(what .. name .. ': views ' .. quoted(held_v) .. ' + ' .. quoted(dv) .. ', clicks ' .. quoted(held_c) ..
           ' + ' .. quoted(dc) .. ', expected finite numbers')
  end
  return v, c
end
-- a score ZADD reads from a stored or given string: a finite number as Redis parses one (no blank around it)
local function score_text(raw, what)
  local x = tonumber(raw)
  if type(raw) ~= 'string' or not x or x - x ~= 0 or string.find(raw, '%s') then
    refuse(what .. ' is ' .. quoted(raw) .. ', expected a finite number')
  end
end

local refusal = checked(function()
  for _, w in ipairs(p.wm) do
    integer(tonumber(text(w[3], 'a new watermark')), 'the new watermark of ' .. text(w[1], 'a partition'), 0)
    text(w[2], 'the expected watermark of ' .. w[1])
  end
  if #p.wm > 0 then typed(P .. 'wm', 'hash') end
end)
if refusal then return refusal end

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

-- 1b. checks: before the first write, everything a later command could refuse. Each key the steps below touch
-- with a typed command is of that type or absent (TYPE, once per distinct key); each number of the payload, and
-- each stored number the batch adds to, is finite (an integer where the command takes one). Cost: a TYPE per
-- distinct key (a user's seen set, a new item's hash, a few shared keys); the stored numbers are reads the steps
-- made anyway, made here (no step writes those keys before reading them) and kept for the steps. A stored value
-- that is no number counts as 0, as it always did (the step overwrites it with a number); one that is NaN or
-- infinite refuses the batch, as it would spread into every score.
local names = {}  -- p.items: {item, {views, clicks, first_ts}}
local old_views, views_now, clicks_now, seg_now, counted_held, first_args = {}, {}, {}, {}, {}, {}
local q, prior_held, cursor_held, clock, at_clock
local segs_before, graduated_of, weights_held, users_held = {}, {}, {}, {}
local seen_writes, seg_args, eid_writes, blob_args, blob_dels = {}, {}, {}, {}, {}  -- step 8's arguments
-- the users whose keys or fields the steps write (each once), and which of them are erased (below, 1c)
local users, listed, owners, erased, any_erased = {}, {}, {}, {}, false
local function list(user)
  if not listed[user] then
    listed[user] = true
    users[#users + 1] = user
  end
end
refusal = checked(function()
  for _, name in ipairs({'m', 'default_ctr', 'default_mass', 'log_step', 'graduate_views', 'item_users_cap'}) do
    finite(cfg[name], 'cfg.' .. name)
  end
  integer(cfg.trend_ttl_s, 'cfg.trend_ttl_s', 1)
  integer(cfg.trend_ttl_s * 1000, 'cfg.trend_ttl_s in ms', 1)  -- EXPIRE refuses a time past that
  integer(cfg.dedup_window_ms, 'cfg.dedup_window_ms', 0)  -- 0: no de-duplication (the worker sends no ids)
  integer(cfg.graduate_age_ms, 'cfg.graduate_age_ms', 0)
  integer(cfg.graduate_standing_events, 'cfg.graduate_standing_events', 1)
  integer(cfg.events_partitions, 'cfg.events_partitions', 1)
  integer(cfg.seen_cap, 'cfg.seen_cap', 0)
  integer(cfg.rescore_items, 'cfg.rescore_items', 1)  -- HSCAN's COUNT
  if p.shared then
    for _, key in ipairs({'segments', 'segments:rescore', 'unavailable', 'graduated', 'foldin:pending'}) do
      expect(P .. key, 'set')
    end
    for _, key in ipairs({'pool', 'rank'}) do expect(P .. key, 'zset') end
    for _, key in ipairs({'views', 'clicks', 'totals'}) do expect(P .. key, 'hash') end
    for _, key in ipairs({'prior', 'rescore', 'clock', 'clock:events'}) do expect(P .. key, 'string') end
    segs_before = redis.call('SMEMBERS', P .. 'segments')
    local every_seg = {}  -- step 4b rescores in each one, this batch's new ones too
    for _, s in ipairs(segs_before) do every_seg[#every_seg + 1] = s end
    for _, seg in ipairs(p.segs) do every_seg[#every_seg + 1] = text(seg[1], 'a segment') end
    for _, s in ipairs(every_seg) do
      expect(P .. 'rank:' .. s, 'zset')
      expect(P .. 'seg:' .. s .. ':views', 'hash')
      expect(P .. 'seg:' .. s .. ':clicks', 'hash')
    end
    -- step 2 (items topic): an item's hash, and its created_ts, its pool score
    for _, it in ipairs(p.meta) do  -- {item, categories, created_ts or '', ts, available '0'/'1', features JSON}
      local key = P .. 'item:' .. text(it[1], 'an item id')
      expect(key, 'hash')
      text(it[2], 'the categories of ' .. it[1])
      text(it[5], 'the availability of ' .. it[1])
      text(it[6], 'the features of ' .. it[1])
      if text(it[3], 'the created_ts of ' .. it[1]) ~= '' then
        score_text(it[3], 'the created_ts of ' .. it[1])
      else
        local held = redis.call('HGET', key, 'created_ts')
        if held then score_text(held, key .. ' created_ts') end
        score_text(it[4], 'the ts of ' .. it[1])
      end
    end
    -- step 3: the counters and what they become
    for k, it in ipairs(p.items) do names[k] = it[1] end
    local held_views, held_clicks = hmget(P .. 'views', names), hmget(P .. 'clicks', names)
    for k, it in ipairs(p.items) do
      local d = it[2]
      views_now[k], clicks_now[k] = added('item ', it[1], held_views[k], held_clicks[k], d[1], d[2])
      if d[3] - d[3] + d[3] ~= d[3] then refuse('item ' .. it[1] .. ': first ts ' .. quoted(d[3])) end
      old_views[k] = held_views[k]
      if not held_views[k] then expect(P .. 'item:' .. it[1], 'hash') end
    end
    -- step 3b: each events partition's count, and each item's first event as a count of the whole stream,
    -- estimated from each partition the batch has it in: partitions × that partition's events before it there
    if #p.counted > 0 then
      expect(P .. 'counted', 'hash')
      expect(P .. 'first', 'hash')
    end
    local least, listed_items = {}, {}
    for c, row in ipairs(p.counted) do  -- {events partition, events, {item, ...}, {its events before each one, ...}}
      local held = redis.call('HGET', P .. 'counted', text(row[1], 'a counted partition'))
      counted_held[c] = held and integer(tonumber(held), P .. 'counted ' .. row[1], 0) or 0
      integer(counted_held[c] + integer(row[2], 'the events of ' .. row[1], 0), 'the count of ' .. row[1], 0)
      for j, item in ipairs(row[3]) do
        local before = integer(row[4][j], 'the first event of ' .. quoted(text(item, 'an item id')), 0)
        local at = cfg.events_partitions * (counted_held[c] + before)
        if not least[item] then
          listed_items[#listed_items + 1] = item
          least[item] = at
        elseif at < least[item] then
          least[item] = at
        end
      end
    end
    local stored = hmget(P .. 'first', listed_items)
    for k, item in ipairs(listed_items) do  -- the least stays; a stored value that is no count is replaced
      local held = tonumber(stored[k])
      if not held or held - held ~= 0 or held < 0 or held ~= math.floor(held) or least[item] < held then
        first_args[#first_args + 1] = item
        first_args[#first_args + 1] = least[item]
      end
    end
    for s, seg in ipairs(p.segs) do  -- {segment, {{item, {views, clicks}}, ...}}
      local key = P .. 'seg:' .. seg[1] .. ':'
      local seg_items = {}
      for k, it in ipairs(seg[2]) do seg_items[k] = it[1] end
      local sv, sc = hmget(key .. 'views', seg_items), hmget(key .. 'clicks', seg_items)
      local what = key .. '* of '
      for k, it in ipairs(seg[2]) do sv[k], sc[k] = added(what, it[1], sv[k], sc[k], it[2][1], it[2][2]) end
      seg_now[s] = {sv, sc}  -- the counts step 3 writes
    end
    -- HINCRBY takes an integer, stored and given; the prior (step 4) follows from the totals it leaves
    local fields = {'views', 'clicks'}
    for _, t in ipairs(p.totals) do fields[#fields + 1] = text(t[1], 'a total') end
    local held = redis.call('HMGET', P .. 'totals', unpack(fields))
    local totals = {}
    for k, field in ipairs(fields) do
      local raw = held[k]
      if raw and not (raw == '0' or (string.match(raw, '^%-?[1-9]%d*$') and #raw <= 18)) then
        refuse(P .. 'totals ' .. field .. ' holds ' .. quoted(raw) .. ', expected an integer')
      end
      totals[field] = tonumber(raw) or 0
    end
    for _, t in ipairs(p.totals) do totals[t[1]] = totals[t[1]] + integer(t[2], 'the total ' .. t[1], -BOUND) end
    local raw = ctr(totals.clicks, totals.views, cfg.default_ctr, cfg.default_mass)
    q = finite(math.exp(math.floor(math.log(raw) / cfg.log_step + 0.5) * cfg.log_step), 'the prior of the totals')
    prior_held, cursor_held = redis.call('GET', P .. 'prior'), redis.call('GET', P .. 'rescore')
    if cursor_held and not string.match(cursor_held, '^%d+$') then
      refuse(P .. 'rescore holds ' .. quoted(cursor_held) .. ', expected a scan cursor')
    end
    -- step 5: trend increments (a stored score that is not finite counts as 0 there: num)
    for _, t in ipairs(p.trend) do  -- {key suffix, {{item, increment}, ...}}
      local key = P .. 'trend:' .. text(t[1], 'a trend key')
      expect(key, 'zset')
      for _, it in ipairs(t[2]) do
        local x = it[2]
        if type(x) ~= 'number' or x - x ~= 0 or type(it[1]) ~= 'string' then
          refuse(key .. ' ' .. quoted(it[1]) .. ' + ' .. quoted(x) .. ', expected an item and a finite number')
        end
      end
    end
    -- step 6: the users of new items and the summed weights they add to
    local new_items = {}
    for k, it in ipairs(p.item_users) do new_items[k] = it[1] end
    graduated_of = many('SMISMEMBER', P .. 'graduated', new_items)
    for k, it in ipairs(p.item_users) do  -- {item, {{user, {weight, ...}}, ...}}
      local key = P .. 'foldin:users:' .. it[1]
      expect(key, 'hash')
      local users = {}
      for j, u in ipairs(it[2]) do
        users[j] = u[1]
        list(u[1])
        for _, w in ipairs(u[2]) do
          if type(w) ~= 'number' or w - w ~= 0 then finite(w, 'a weight of ' .. it[1] .. ' by ' .. u[1]) end
        end
      end
      if graduated_of[k] == 0 then
        local old, size = hmget(key, users)
        for j in ipairs(users) do  -- a stored weight that is no number: the user is not counted (as before)
          local r = old[j] and tonumber(old[j])
          if r and r - r ~= 0 then refuse(key .. ' ' .. users[j] .. ' holds ' .. quoted(old[j])) end
          old[j] = r or false
        end
        weights_held[k], users_held[k] = old, size or redis.call('HLEN', key)
      end
    end
    -- step 7: the event clock, and how many events were applied at its instant (p.at_clock: the batch's events
    -- stamped at its own clock); an event stamped earlier never counts, so neither does a lagging partition's batch
    local held_clock = tonumber(redis.call('GET', P .. 'clock')) or 0
    clock = math.max(finite(held_clock, P .. 'clock'), finite(p.clock, 'the clock'))
    local held_count = finite(tonumber(redis.call('GET', P .. 'clock:events')) or 0, P .. 'clock:events')
    integer(p.at_clock, 'the events at the clock', 0)
    if p.clock > held_clock then at_clock = p.at_clock
    elseif p.clock == held_clock then at_clock = held_count + p.at_clock
    else at_clock = held_count end
  end
  -- step 8: its commands' arguments, built here as they are checked (a loop over each user's items, not two);
  -- MSET and SET replace a value of any type, so the blobs' and rankers' keys need no TYPE
  for user, items in pairs(p.seen) do  -- {user: {item: ts}}
    local key = P .. 'user:' .. user .. ':seen'
    typed(key, 'zset')  -- a key per user: asked once, not remembered in `kinds`
    local args = {}
    for item, ts in pairs(items) do
      if ts - ts + ts ~= ts then refuse(key .. ' ' .. item .. ' at ' .. quoted(ts)) end
      args[#args + 1] = ts
      args[#args + 1] = item
    end
    seen_writes[#seen_writes + 1] = {key, args, user}
    list(user)
  end
  if next(p.user_segments) ~= nil then expect(P .. 'user:seg', 'hash') end
  for user, segment in pairs(p.user_segments) do
    if type(segment) ~= 'string' then text(segment, 'the segment of ' .. user) end
    seg_args[#seg_args + 1] = user
    seg_args[#seg_args + 1] = segment
    list(user)
  end
  -- the ids grouped by arrival, each arrival as text: ZADD takes the one string for every id of its group, where a
  -- number per id was printed by redis.call ('%.17g', glibc's slowest path) for every id of the batch
  for tp, groups in pairs(p.eids) do  -- {topic:partition: {{arrival ms as text, {user:event_id, ...}}, ...}}
    local key = P .. 'eids:' .. tp
    expect(key, 'zset')
    local args, latest = {}, 0
    for _, group in ipairs(groups) do
      local at = group[1]
      score_text(at, key .. ' arrival')
      for _, id in ipairs(group[2]) do
        if type(id) ~= 'string' then text(id, key .. ' id') end
        args[#args + 1] = at
        args[#args + 1] = id
      end
      latest = math.max(latest, tonumber(at))
    end
    eid_writes[#eid_writes + 1] = {key, args, latest}
  end
  -- p.blobs: key suffixes (user hist/vec/cand/bcand/prefs, item similar) in order; p.blob_ends: where each one's
  -- value ends in ARGV[2] (it starts after the previous one's): two arrays, not a table per value, which cjson builds
  -- for each. A value of no bytes deletes its key (a list the model version no longer gives a user,
  -- streams/personalize.py); no value of ours is empty
  local first = 1
  for k, suffix in ipairs(p.blobs) do
    local last = p.blob_ends[k]
    local owner = string.match(suffix, '^user:([^:]+):')  -- user:<u>:… (item:<i>:similar: none)
    if owner then list(owner) end
    if last < first then
      blob_dels[#blob_dels + 1] = P .. suffix
    else
      blob_args[#blob_args + 1] = P .. suffix
      blob_args[#blob_args + 1] = string.sub(ARGV[2], first, last)
      owners[#owners + 1] = owner or false
    end
    first = last + 1
  end
  for _, r in ipairs(p.rankers) do
    text(r[1], 'a ranker key')
    integer(r[2], 'a ranker state start', 1)
    integer(r[3], 'a ranker state end', 0)
  end
  -- 1c. erased users (recstream/store/erasure.py): in the same script as the writes, so an erasure is applied
  -- either before this batch (and nothing of the user is written here) or after it (and deletes what it wrote).
  -- One SMISMEMBER of the batch's distinct users; the writes are filtered only when one of them is erased
  if #users > 0 then
    expect(P .. 'erased', 'set')
    local found = many('SMISMEMBER', P .. 'erased', users)
    for k, user in ipairs(users) do
      if found[k] == 1 then erased[user], any_erased = true, true end
    end
  end
  if any_erased then
    local kept_seg, kept_blobs = {}, {}
    for k = 1, #seg_args, 2 do
      if not erased[seg_args[k]] then
        kept_seg[#kept_seg + 1] = seg_args[k]
        kept_seg[#kept_seg + 1] = seg_args[k + 1]
      end
    end
    for k, owner in ipairs(owners) do
      if not (owner and erased[owner]) then
        kept_blobs[#kept_blobs + 1] = blob_args[2 * k - 1]
        kept_blobs[#kept_blobs + 1] = blob_args[2 * k]
      end
    end
    seg_args, blob_args = kept_seg, kept_blobs
  end
end)
if refusal then return refusal end

-- 2.-7. the shared state: counters, rankings, items, pool (the {shared} slot on a cluster; p.shared false: a
-- partition's slot, which holds sections 8 and 9 only)
local q_str, full, graduated, standing = '', false, {}, false
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
    for _, s in ipairs(segs_before) do redis.call('ZREM', P .. 'rank:' .. s, it[1]) end
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
local views_args, clicks_args = {}, {}
local counts = {}  -- item → {views, clicks} as just written: step 4 scores these without reading them back
for k, it in ipairs(p.items) do  -- the counts step 1b read and added up
  local item, d = it[1], it[2]
  views_args[#views_args + 1] = item  -- even +0: every counted item has a views field
  views_args[#views_args + 1] = views_now[k]
  if d[2] ~= 0 then
    clicks_args[#clicks_args + 1] = item
    clicks_args[#clicks_args + 1] = clicks_now[k]
  end
  counts[item] = {views_now[k], clicks_now[k]}
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
-- 3b. each events partition's count, and each item's first event estimated as the least over partitions of
-- partitions × the partition's events before the item's first one there: each candidate a function of one
-- partition's log, and the least of them whatever the order, so a rebuild, cut into other batches, writes the same
for c, row in ipairs(p.counted) do redis.call('HSET', P .. 'counted', row[1], counted_held[c] + row[2]) end
many('HSET', P .. 'first', first_args)
for s, seg in ipairs(p.segs) do  -- {segment, {{item, {views, clicks}}, ...}}
  local key = P .. 'seg:' .. seg[1] .. ':'
  redis.call('SADD', P .. 'segments', seg[1])
  local sv, sc = seg_now[s][1], seg_now[s][2]  -- as step 1b read and added them up
  local sv_args, sc_args = {}, {}
  for k, it in ipairs(seg[2]) do
    sv_args[#sv_args + 1] = it[1]
    sv_args[#sv_args + 1] = sv[k]
    if it[2][2] ~= 0 then
      sc_args[#sc_args + 1] = it[1]
      sc_args[#sc_args + 1] = sc[k]
    end
  end
  many('HSET', key .. 'views', sv_args)
  many('HSET', key .. 'clicks', sc_args)
end
for _, t in ipairs(p.totals) do redis.call('HINCRBY', P .. 'totals', t[1], t[2]) end
for _, item in ipairs(became_available) do  -- back in the rankings, if counted: a never-viewed item is in none (a
  if redis.call('HEXISTS', P .. 'views', item) == 1 then touch(item) end  -- score at the prior no pass would rescore)
end

-- 4. smoothed-CTR rankings under the quantized global prior (models.ctr.quantize_ctr): the touched items, and
-- when the prior moved, every counted item, but at most about cfg.rescore_items of them per batch: a rescore
-- pass whose HSCAN cursor over `views` is kept in `rescore` (a moved prior restarts it), so no batch costs
-- O(catalogue). Until a pass ends an item's score may be under an older prior; once it ends (a batch, or an
-- empty one when the worker is idle), every score is f(final counters, final prior) again, as a whole rescore
-- in one batch left it (HSCAN returns every field present for the whole pass at least once).
q_str = fmt(q)  -- q: step 1b's, of the totals as the HINCRBYs above left them
full = prior_held ~= q_str
if full then
  redis.call('SET', P .. 'prior', q_str)
  redis.call('SET', P .. 'rescore', '0')
end
local cursor = full and '0' or cursor_held
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
local views, clicks = hmget(P .. 'views', unread), hmget(P .. 'clicks', unread)
for k, item in ipairs(unread) do counts[item] = {num(views[k]), num(clicks[k])} end
local rank_args = {}
for _, item in ipairs(live) do
  local c = counts[item]
  local g = ctr(c[2], c[1], q, cfg.m)
  if g ~= g then g = 0 end  -- ZADD refuses NaN: finite counts never give one, a negative one someone stored might
  rank_args[#rank_args + 1] = g
  rank_args[#rank_args + 1] = item
end
many('ZADD', P .. 'rank', rank_args)
many('SADD', P .. 'segments:rescore', live)

-- 4b. per-segment rankings of the items waiting in `segments:rescore` (this batch's and earlier ones'), in the calls
-- that ask for it, at most as many as this batch listed or cfg.rescore_items, the more (each listed item is ranked
-- once, so the work is at most what every batch paid before, and the items waiting never outgrow what a few calls
-- take; one call may pay for items other batches or workers listed: the set is shared). A segment score leans
-- on the item's global score, so every segment that counts a touched item moves, and a batch of random events
-- touches nearly every item of a catalogue in every segment (bench.worker's live phase: 98-234 ms of a live batch's
-- script went to it). Asked about twice a second (the reader reloads these lists once a second), it is paid once
-- per interval instead of once per batch; until then a segment score may lag its counters, and once the set is
-- empty (an idle worker finishes it, as it finishes a rescore pass) every segment score is f(final counters, final
-- global score) again. An item no longer in `rank` (unavailable since, step 2 took it out of every ranking) is
-- dropped; a segment's clicks are read only for the items it counts (at x100 a segment counts about half of a
-- batch's items).
if p.rank_segments then
  local due = redis.call('SPOP', P .. 'segments:rescore', math.max(cfg.rescore_items, #live))
  local held = many('ZMSCORE', P .. 'rank', due)
  local ranked, scores = {}, {}
  for k, item in ipairs(due) do
    if held[k] then
      ranked[#ranked + 1] = item
      scores[#scores + 1] = tonumber(held[k])
    end
  end
  for _, s in ipairs(redis.call('SMEMBERS', P .. 'segments')) do
    local sv = hmget(P .. 'seg:' .. s .. ':views', ranked)
    local counted, at = {}, {}
    for k, item in ipairs(ranked) do
      if sv[k] then
        counted[#counted + 1] = item
        at[#at + 1] = k
      end
    end
    local sc = hmget(P .. 'seg:' .. s .. ':clicks', counted)
    local args = {}
    for j, item in ipairs(counted) do
      local k = at[j]
      local s_score = ctr(num(sc[j]), num(sv[k]), scores[k], cfg.m)
      if s_score ~= s_score then s_score = 0 end
      args[#args + 1] = s_score
      args[#args + 1] = item
    end
    many('ZADD', P .. 'rank:' .. s, args)
  end
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
-- item_users_cap users; an erased user is none of them (1c)
for k, it in ipairs(p.item_users) do  -- {item, {{user, {weight, ...}}, ...}}
  if graduated_of[k] == 0 then  -- its users' stored weights (numbers) and count: step 1b read them
    local key = P .. 'foldin:users:' .. it[1]
    local old, size = weights_held[k], users_held[k]
    local args = {}
    for j, u in ipairs(it[2]) do
      local r = old[j]
      if erased[u[1]] then
        r = false
      elseif not r and size < cfg.item_users_cap then
        r, size = 0, size + 1
      end
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
-- with users waits in foldin:pending for its fold-in, and the batch returns every waiting item.
-- A standing clock (cfg.graduate_standing_events applied at one instant: timestamps filled in, a file without
-- dates) measures no age, and the pool would hold the whole catalogue for good: then every pool item created by
-- that instant graduates, until the clock moves (an item created later, as one announced live before the first live
-- event moves the clock, stays; an undated catalogue item with events is as old as its first one, below). Both age
-- rules take the oldest CHUNK items a batch (a catalogue of them at once would block Redis for seconds); the next
-- batches take the rest.
redis.call('SET', P .. 'clock', clock)  -- step 1b's: the stored one or the batch's, the later
redis.call('SET', P .. 'clock:events', at_clock)
-- A pool item is as old as its first event when that came before its stated creation (a catalogue imported without
-- dates is stamped with the import's time, years after the history replayed with it): its pool score moves back to
-- the batch's first event of it (its p.items row's first_ts), and the age rule below judges it on that. Its
-- created_ts stays: the pool's score ends the same whatever the batches (the least event ts applied while it is in
-- the pool), the hash's would not (an event applied after the item left the pool would not move it).
local function judge(items, views, rows)  -- rows: p.items (items are their names), or nil (no first events)
  local in_pool = many('ZMSCORE', P .. 'pool', items)
  for k, item in ipairs(items) do
    local first = rows and rows[k][2][3]
    if in_pool[k] and first and first < tonumber(in_pool[k]) then
      redis.call('ZADD', P .. 'pool', 'XX', first, item)
    end
    if in_pool[k] and num(views[k]) >= cfg.graduate_views then
      graduated[#graduated + 1] = item
      redis.call('ZREM', P .. 'pool', item)  -- now, so the age rule cannot list it a second time
    end
  end
end
judge(names, views_now, p.items)
-- an item that entered the pool in step 2 with its views already counted (events applied before its announcement,
-- or before it became available again) is judged on them now: graduation must not depend on which came first
judge(pooled, hmget(P .. 'views', pooled), nil)
standing = at_clock >= cfg.graduate_standing_events
local aged = standing and string.format('%d', clock) or '(' .. string.format('%d', clock - cfg.graduate_age_ms)
for _, item in ipairs(redis.call('ZRANGEBYSCORE', P .. 'pool', '-inf', aged, 'LIMIT', 0, CHUNK)) do
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
-- (step 1b built the arguments of each command)
for _, w in ipairs(seen_writes) do  -- {key, {ts, item, ...}, user}
  if not erased[w[3]] then
    many('ZADD', w[1], w[2], 'GT')
    redis.call('ZREMRANGEBYRANK', w[1], 0, -(cfg.seen_cap + 1))
  end
end
many('HSET', P .. 'user:seg', seg_args)
-- event ids applied (streams/processor.py drops a user's id seen within the window), one key per partition:
-- kept for the window of arrival time, older ones trimmed at each of the partition's batches, so at most a window's
-- ids a partition. No expiry: the window is record time, and a wall-clock one dropped the ids while the workers were
-- down, so a copy a client resent during the outage (arrived within the window) was applied again after it
for _, w in ipairs(cfg.dedup_window_ms > 0 and eid_writes or {}) do  -- {key, {arrival ms, user:event_id, ...},
  many('ZADD', w[1], w[2], 'GT')                                        -- latest arrival}; window 0: none kept
  redis.call('ZREMRANGEBYSCORE', w[1], '-inf', '(' .. string.format('%d', w[3] - cfg.dedup_window_ms))
end
for first = 1, #blob_dels, CHUNK do  -- first, so a key a batch both deleted and wrote would keep the value
  redis.call('DEL', unpack(blob_dels, first, math.min(first + CHUNK - 1, #blob_dels)))
end
for first = 1, #blob_args, CHUNK do
  redis.call('MSET', unpack(blob_args, first, math.min(first + CHUNK - 1, #blob_args)))
end

-- 9. the online ranker's state of each events partition the batch trained (streams/ranker_training.py), and
-- the watermarks: they move with the effect they cover
for _, r in ipairs(p.rankers) do redis.call('SET', r[1], string.sub(ARGV[2], r[2], r[3])) end  -- {key, first, last}
for _, w in ipairs(p.wm) do redis.call('HSET', P .. 'wm', w[1], w[3]) end
return {'ok', q_str, full and 1 or 0, graduated, p.shared and redis.call('SMEMBERS', P .. 'foldin:pending') or {},
        p.shared and redis.call('EXISTS', P .. 'rescore') or 0,
        p.shared and redis.call('SCARD', P .. 'segments:rescore') or 0, standing and 1 or 0}
