-- When each "user:event_id" of a batch last arrived: ZMSCORE per partition's key, the ids in ONE argument.
--
-- Why a script: ZMSCORE takes each id as its own command argument, and redis-py packs every argument in
-- Python (about a microsecond each, a few thousand per batch); one JSON argument is packed at once and
-- cjson decodes it in C. Read-only. ARGV[1]: [[key, [member, ...]], ...]; returns, per key, each
-- member's score or nil (false here), in order.

local CHUNK = 4000  -- unpack() fails above ~8000 values
local out = {}
for i, entry in ipairs(cjson.decode(ARGV[1])) do
  local key, members, scores = entry[1], entry[2], {}
  for first = 1, #members, CHUNK do
    local reply = redis.call('ZMSCORE', key, unpack(members, first, math.min(first + CHUNK - 1, #members)))
    for k = 1, #reply do scores[#scores + 1] = reply[k] end
  end
  out[i] = scores
end
return out
