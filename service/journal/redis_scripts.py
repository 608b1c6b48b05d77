"""Lua scripts of the Redis journal: each change of a record, lease or key in one atomic step."""

# Every script is safe to send twice (redis-py's Retry re-sends one whose answer was lost): the
# second run finds its own first run's work and answers the same (CREATE: the key already names
# this id; SAVE: same body; TAKE_OVER and ADOPT: the `taker` field holds this call's nonce;
# RENEW: PEXPIRE and SET NX are idempotent).

CREATE = """
if #KEYS == 3 then
  local earlier = redis.call('GET', KEYS[3])
  if earlier then
    local body = redis.call('HGET', ARGV[4] .. earlier, 'body')
    if body then return {earlier, body} end
  end
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[5])
end
redis.call('HSET', KEYS[1], 'body', ARGV[2], 'owner', ARGV[3], 'state', ARGV[6], 'epoch', '1')
redis.call('SADD', KEYS[2], ARGV[1])
return {ARGV[1]}
"""

# 1: saved; 0: another owner or a newer epoch holds it (fenced); 2: the record was gone (Redis
# lost its data), so its owner wrote it back.
SAVE = """
local held = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
local answer = 1
if not held[1] then
  answer = 2
elseif held[1] ~= ARGV[3] or held[2] ~= ARGV[7] then
  return 0
end
redis.call('HSET', KEYS[1], 'body', ARGV[2], 'state', ARGV[6], 'owner', ARGV[3], 'epoch', ARGV[7])
if ARGV[4] == '1' then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else
  redis.call('SADD', KEYS[2], ARGV[1])
end
return answer
"""

TAKE_OVER = """
local taken = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local op = ARGV[2] .. id
  local held = redis.call('HMGET', op, 'owner', 'taker')
  local owner = held[1]
  if not owner then
    redis.call('SREM', KEYS[1], id)
  elseif held[2] == ARGV[4] or
      (owner ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. owner) == 0) then
    if held[2] ~= ARGV[4] then
      redis.call('HSET', op, 'owner', ARGV[1], 'taker', ARGV[4])
      redis.call('HINCRBY', op, 'epoch', 1)
    end
    table.insert(taken, id)
    table.insert(taken, redis.call('HGET', op, 'body'))
    table.insert(taken, redis.call('HGET', op, 'epoch'))
  end
end
return taken
"""

ADOPT = """
local held = redis.call('HMGET', KEYS[1], 'state', 'taker')
if held[2] ~= ARGV[2] then
  if held[1] ~= 'unwatched' then return false end
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'state', 'adopted', 'taker', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'epoch', 1)
end
return redis.call('HMGET', KEYS[1], 'body', 'epoch')
"""

CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
if state ~= 'queued' and state ~= 'awaiting_approval' then return state end
redis.call('HSET', KEYS[1], 'body', ARGV[2], 'owner', '', 'state', 'cancelled')
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return state
"""
"""A queued (or awaiting) operation cancelled by any replica: its owner (now nobody) can no
longer save it."""

RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"""

RESTORE = """
if #KEYS == 3 then redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[8], 'NX') end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'body', ARGV[2], 'owner', ARGV[3], 'state', ARGV[6], 'epoch', ARGV[7])
if ARGV[4] == '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else
  redis.call('SADD', KEYS[2], ARGV[1])
end
return 1
"""

# The lease and the generation marker in one round trip. 'lost': the marker is gone or another
# one (Redis came back empty); 'lapsed': our lease key expired (someone may have taken our
# operations over); 'held'. A fresh identity creates its key; an old one only extends it, so a
# lapse is never hidden by the renewal itself.
RENEW = """
local generation = redis.call('GET', KEYS[2])
if not generation then
  redis.call('SET', KEYS[2], ARGV[3])
  generation = ARGV[3]
end
local held
if ARGV[4] == '1' then
  held = redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
else
  held = redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 1
end
if generation ~= ARGV[2] then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  return {'lost', generation}
end
if not held then return {'lapsed', generation} end
return {'held', generation}
"""
