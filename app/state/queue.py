"""The job queue in Redis: Lua scripts, each one atomic step (Redis runs a script whole or not at all).

The reliable-queue pattern: a worker moves a job id from `queue` to `processing` and records a
lease deadline in `leases` and itself in `owners` in the same step (LMOVE + ZADD + HSET), renews
the lease while it works, and drops all three when the job ends. Only the owner renews or ends a
lease: a worker that stalled past its lease and resumed finds the job is no longer its own. Any
worker reaps leases past their deadline: the job goes back to the queue. Deadlines use the Redis
server's clock (TIME), so workers' clocks need not agree. A script does the one write that can fail
(a key of the wrong type) before any other write, as Redis does not roll a script back.
"""

from __future__ import annotations

_NOW_MS = (
    "local t = redis.call('time') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
)

# KEYS: active, job, queue. ARGV: job id, job JSON, active TTL ms, job TTL s.
SUBMIT = """
local cur = redis.call('get', KEYS[1])
if cur then return cur end
redis.call('rpush', KEYS[3], ARGV[1])
redis.call('set', KEYS[2], ARGV[2], 'EX', ARGV[4])
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[3])
return false
"""

# KEYS: queue, leases. ARGV: job id.
IN_FLIGHT = """
if redis.call('zscore', KEYS[2], ARGV[1]) then return 1 end
if redis.call('lpos', KEYS[1], ARGV[1]) then return 1 end
return 0
"""

# KEYS: queue, processing, leases, owners. ARGV: lease ms, owner.
TAKE = (
    _NOW_MS
    + """
local id = redis.call('lmove', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
if id then
  redis.call('zadd', KEYS[3], now + tonumber(ARGV[1]), id)
  redis.call('hset', KEYS[4], id, ARGV[2])
end
return id
"""
)

# KEYS: leases, owners. ARGV: job id, owner, lease ms. Only the lease's owner renews it.
RENEW = (
    _NOW_MS
    + """
if redis.call('hget', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
if not redis.call('zscore', KEYS[1], ARGV[1]) then return 0 end
redis.call('zadd', KEYS[1], 'XX', now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

# KEYS: processing, leases, owners. ARGV: job id, owner. Only the owner ends its lease.
FINISH = """
if redis.call('hget', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('lrem', KEYS[1], 0, ARGV[1])
redis.call('zrem', KEYS[2], ARGV[1])
redis.call('hdel', KEYS[3], ARGV[1])
return 1
"""

# KEYS: queue, processing, leases, owners. ARGV: job id, owner.
HAND_BACK = """
if redis.call('hget', KEYS[4], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('zrem', KEYS[3], ARGV[1])
redis.call('hdel', KEYS[4], ARGV[1])
if redis.call('lrem', KEYS[2], 0, ARGV[1]) > 0 then
  redis.call('rpush', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# KEYS: queue, processing, leases, owners. Returns the ids handed back.
REAP = (
    _NOW_MS
    + """
local ids = redis.call('zrangebyscore', KEYS[3], '-inf', now)
local back = {}
for _, id in ipairs(ids) do
  redis.call('zrem', KEYS[3], id)
  redis.call('hdel', KEYS[4], id)
  if redis.call('lrem', KEYS[2], 0, id) > 0 then
    redis.call('rpush', KEYS[1], id)
    table.insert(back, id)
  end
end
return back
"""
)

# KEYS: aliases. ARGV: alias, version, alias, version, ... Fills the hash only if it is empty.
RESTORE_ALIASES = """
if redis.call('exists', KEYS[1]) == 0 and #ARGV > 0 then
  redis.call('hset', KEYS[1], unpack(ARGV))
  return 1
end
return 0
"""

# KEYS: a key. ARGV: a value. Delete the key only if it still holds the value (compare-and-delete).
CLEAR_IF = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
