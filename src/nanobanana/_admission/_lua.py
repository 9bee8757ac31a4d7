"""The Redis governor's scripts: every step one atomic Lua script, timed by Redis ``TIME``.

Keys of one API key and base URL share a hash tag, ``{digest}``, so that they live in
one Redis Cluster slot (the scripts also build the ``wake:`` list names from the
prefix: same tag, same slot). Times are Redis's own milliseconds, so the hosts' clocks
may disagree.

Requests in flight (KEYS: leases, granted, queue, alive, seq, conf, cool, released):

- ``leases`` ZSET lease id -> expiry; ``granted`` ZSET lease id -> grant time.
- ``released`` ZSET lease id -> expiry: leases released in the last lease, so that a
  renewal that reaches Redis after the release does not bring the slot back.
- ``queue`` ZSET waiter id -> ticket (first come first served; a retry gets ticket 0);
  ``alive`` ZSET waiter id -> expiry (a dead process's waiter leaves the queue).
- ``conf`` HASH ``limit``, ``known``, ``ceiling``, ``answers``, ``probed``: the learned limit
  (`nanobanana._admission._learning` says the rules; the scripts apply the same).
- ``cool`` the end of a cool-down after a 429 from load nobody here sent.
- ``wake:<waiter>`` LIST: when a slot frees, the script that frees it hands it to the
  first waiter (its lease is named after it) and pushes the level here; the waiter
  BLPOPs its list.

Async tasks (KEYS: tasks, reserved, tconf): ``tasks`` ZSET job id -> lease expiry,
``reserved`` ZSET submit id -> lease expiry, ``tconf`` HASH ``cap``.
"""

from __future__ import annotations

__all__ = [
    "ABANDON",
    "ACQUIRE",
    "LEARN",
    "REFUSED",
    "RELEASE",
    "RENEW",
    "TASK_BUSY",
    "TASK_DROP",
    "TASK_KEEP",
    "TASK_RENEW",
    "TASK_SEEN",
    "TASK_START",
    "TASK_STRANGER",
    "TASK_TAKE",
]

# How long the learned limit and cap are remembered without use: a week.
_KEEP_MS = str(7 * 24 * 3600 * 1000)

_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function purge(now)
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    redis.call('ZREM', KEYS[2], unpack(dead))
  end
  local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
    redis.call('ZREM', KEYS[3], unpack(gone))
  end
end
local function conf(default, ceiling)
  local v = redis.call('HMGET', KEYS[6], 'limit', 'known', 'ceiling')
  return tonumber(v[1]) or default, v[2] == '1', tonumber(v[3]) or ceiling
end
local function free(now, limit)
  local room = limit - redis.call('ZCARD', KEYS[1])
  local cool = tonumber(redis.call('GET', KEYS[7]) or '0')
  if now < cool then room = 0 end
  return room
end
local function wake(prefix, now, limit, lease_ms)
  -- Hand the free slots to the first waiters at once: each is told by a push to its
  -- own list, and finds its lease (named after it) already taken for it.
  local room = free(now, limit)
  if room > 0 then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, room - 1)) do
      redis.call('ZREM', KEYS[3], id)
      redis.call('ZREM', KEYS[4], id)
      redis.call('ZADD', KEYS[1], now + lease_ms, id)
      redis.call('ZADD', KEYS[2], now, id)
      local key = prefix .. 'wake:' .. id
      redis.call('LPUSH', key, redis.call('ZCARD', KEYS[1]))
      redis.call('PEXPIRE', key, 60000)
    end
  end
end
local function keep_conf()
  redis.call('PEXPIRE', KEYS[6], KEEP_MS)
end
""".replace("KEEP_MS", _KEEP_MS)

# ARGV: prefix, waiter (also its lease's name), -, lease_ms, default limit, ceiling,
# front (0/1), proof_ms -> {granted, active (level), limit, known, waiting, hint_ms}
ACQUIRE = (
    _COMMON
    + """
local now = now_ms()
purge(now)
local limit, known, ceiling = conf(tonumber(ARGV[5]), tonumber(ARGV[6]))
local lease_ms, proof = tonumber(ARGV[4]), tonumber(ARGV[8])
local proof_due = -1
local answered = redis.call('HMGET', KEYS[6], 'answers', 'probed')
local fresh = tonumber(answered[1] or '0') > tonumber(answered[2] or '-1')
if not known and fresh and limit < ceiling and redis.call('ZCARD', KEYS[1]) >= limit then
  -- The server refuses at once: requests unanswered for `proof` ms were admitted.
  -- (Only with an answer since the last probe: a lagging client may not have read
  -- that probe's 429 yet.)
  if redis.call('ZCOUNT', KEYS[2], '-inf', now - proof) >= limit then
    limit = limit + 1
    redis.call('HSET', KEYS[6], 'limit', limit, 'probed', answered[1] or '0')
    keep_conf()
  else
    local youngest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
    if youngest[2] then proof_due = tonumber(youngest[2]) + proof - now end
  end
end
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  -- Handed a slot by a release while it was not listening.
  redis.call('DEL', ARGV[1] .. 'wake:' .. ARGV[2])
  return {1, redis.call('ZCARD', KEYS[1]), limit, known and 1 or 0, redis.call('ZCARD', KEYS[3]), 0}
end
if not redis.call('ZSCORE', KEYS[3], ARGV[2]) then
  local ticket = 0
  if ARGV[7] ~= '1' then
    ticket = redis.call('INCR', KEYS[5])
    redis.call('PEXPIRE', KEYS[5], KEEP_MS)
  end
  redis.call('ZADD', KEYS[3], ticket, ARGV[2])
end
redis.call('ZADD', KEYS[4], now + lease_ms, ARGV[2])
local room = free(now, limit)
local rank = redis.call('ZRANK', KEYS[3], ARGV[2])
local waiting = redis.call('ZCARD', KEYS[3])
local k = known and 1 or 0
if rank < room then
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('ZREM', KEYS[4], ARGV[2])
  redis.call('DEL', ARGV[1] .. 'wake:' .. ARGV[2])
  redis.call('ZADD', KEYS[1], now + lease_ms, ARGV[2])
  redis.call('ZADD', KEYS[2], now, ARGV[2])
  local level = redis.call('ZCARD', KEYS[1])
  wake(ARGV[1], now, limit, lease_ms)
  return {1, level, limit, k, waiting - 1, 0}
end
local hint = lease_ms
local cool = tonumber(redis.call('GET', KEYS[7]) or '0')
if now < cool then
  hint = cool - now
else
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if first[2] then hint = math.max(1, tonumber(first[2]) - now) end
  if proof_due >= 0 then hint = math.max(1, math.min(hint, proof_due + 1)) end
end
return {0, redis.call('ZCARD', KEYS[1]), limit, k, waiting, hint}
"""
).replace("KEEP_MS", _KEEP_MS)

# ARGV: prefix, lease, proves (0/1), level, default limit, ceiling, lease_ms
# -> {limit, known}
RELEASE = (
    _COMMON
    + """
local now = now_ms()
local granted = redis.call('ZSCORE', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now)
redis.call('ZADD', KEYS[8], now + tonumber(ARGV[7]), ARGV[2])
redis.call('PEXPIRE', KEYS[8], tonumber(ARGV[7]))
purge(now)
local limit, known, ceiling = conf(tonumber(ARGV[5]), tonumber(ARGV[6]))
if not known then
  redis.call('HINCRBY', KEYS[6], 'answers', 1)
  keep_conf()
end
if ARGV[3] == '1' and granted and not known then
  local level = tonumber(ARGV[4])
  local half = math.floor((now - tonumber(granted)) / 2)
  local held = redis.call('ZCOUNT', KEYS[2], '-inf', now - half)
  if level >= limit and held >= limit - 1 and limit < ceiling
     and redis.call('ZCARD', KEYS[3]) > 0 then
    limit = limit + 1
    redis.call('HSET', KEYS[6], 'limit', limit)
    keep_conf()
  end
end
wake(ARGV[1], now, limit, tonumber(ARGV[7]))
return {limit, known and 1 or 0}
"""
)

# ARGV: prefix, limit, lease_ms -> {limit}
LEARN = (
    _COMMON
    + """
local now = now_ms()
redis.call('HSET', KEYS[6], 'limit', ARGV[2], 'known', '1')
keep_conf()
wake(ARGV[1], now, tonumber(ARGV[2]), tonumber(ARGV[3]))
return {tonumber(ARGV[2])}
"""
)

# ARGV: prefix, level, stated (-1: none), retry_after_ms (-1: none), default, ceiling
# -> {limit, known, own}
REFUSED = (
    _COMMON
    + """
local now = now_ms()
local limit, known, ceiling = conf(tonumber(ARGV[5]), tonumber(ARGV[6]))
local level, stated = tonumber(ARGV[2]), tonumber(ARGV[3])
local own = (not known) or level > limit
if stated > 0 then
  limit, known = stated, true
  redis.call('HSET', KEYS[6], 'limit', limit, 'known', '1')
  keep_conf()
elseif own then
  ceiling = math.max(1, math.min(ceiling, level - 1))
  limit = math.max(1, math.min(limit, ceiling))
  redis.call('HSET', KEYS[6], 'limit', limit, 'ceiling', ceiling)
  keep_conf()
end
local pause = tonumber(ARGV[4])
if not own and pause > 0 then
  local cool = tonumber(redis.call('GET', KEYS[7]) or '0')
  if now + pause > cool then redis.call('SET', KEYS[7], now + pause, 'PX', pause) end
end
return {limit, known and 1 or 0, own and 1 or 0}
"""
)

# ARGV: prefix, waiter (its lease's name too), -, default, ceiling, lease_ms -> {}
ABANDON = (
    _COMMON
    + """
local now = now_ms()
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('DEL', ARGV[1] .. 'wake:' .. ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
local limit = conf(tonumber(ARGV[4]), tonumber(ARGV[5]))
wake(ARGV[1], now, limit, tonumber(ARGV[6]))
return {}
"""
)

# KEYS: leases, granted, released. ARGV: lease_ms, lease ids... -> number renewed
# A lease that is gone without a release (Redis restarted empty, or the lease ran out
# while Redis was away) is counted again: its request is still in flight, and a fleet
# that did not count it would send too many and learn too low a limit from the 429.
# A released one stays released, whichever of the two reached Redis first.
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local renewed = 0
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i])
    renewed = renewed + 1
  elseif not redis.call('ZSCORE', KEYS[3], ARGV[i]) then
    redis.call('ZADD', KEYS[1], until_ms, ARGV[i])
    redis.call('ZADD', KEYS[2], 'NX', now, ARGV[i])
    renewed = renewed + 1
  end
end
return renewed
"""

_TASKS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function purge(now)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
local function tasks()
  return redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
end
"""

# ARGV: key, lease_ms -> {taken, count, cap (-1: unknown)}
TASK_TAKE = (
    _TASKS
    + """
local now = now_ms()
purge(now)
local cap = tonumber(redis.call('HGET', KEYS[3], 'cap') or '-1')
local count = tasks()
local ok
if cap < 0 then ok = redis.call('ZCARD', KEYS[2]) == 0 else ok = count < cap end
if ok then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
  return {1, count + 1, cap}
end
return {0, count, cap}
"""
)

# ARGV: key -> {count}
TASK_DROP = (
    _TASKS
    + """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
return {tasks()}
"""
)

# ARGV: key, job id (the key itself to keep an unnamed one), task lease_ms -> {count}
TASK_START = (
    _TASKS
    + """
local now = now_ms()
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
return {tasks()}
"""
)
TASK_KEEP = TASK_START

# ARGV: job id, finished (0/1), task lease_ms -> {count}
TASK_SEEN = (
    _TASKS
    + """
if ARGV[2] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], 'XX', now_ms() + tonumber(ARGV[3]), ARGV[1])
end
return {tasks()}
"""
)

# ARGV: key, active tasks (-1: none) -> {cap, others}
TASK_BUSY = (
    _TASKS
    + """
local now = now_ms()
purge(now)
local active = tonumber(ARGV[2])
if active >= 1 then
  redis.call('HSET', KEYS[3], 'cap', active)
  redis.call('PEXPIRE', KEYS[3], KEEP_MS)
end
local cap = tonumber(redis.call('HGET', KEYS[3], 'cap') or '-1')
local others = tasks()
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then others = others - 1 end
return {cap, others}
"""
).replace("KEEP_MS", _KEEP_MS)

# -> {count, cap, job polled longest ago or ''}
TASK_STRANGER = (
    _TASKS
    + """
local now = now_ms()
purge(now)
local cap = tonumber(redis.call('HGET', KEYS[3], 'cap') or '-1')
local count = tasks()
local first = redis.call('ZRANGE', KEYS[1], 0, 0)
return {count, cap, first[1] or ''}
"""
)

# ARGV: lease_ms, submit keys... -> number renewed
TASK_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[1]), ARGV[i])
end
return #ARGV - 1
"""
