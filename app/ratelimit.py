"""Per-key rate limits and quotas kept in Redis, so every API process shares the same counters.

Atomic Lua scripts, timed by the Redis clock (so API processes on different machines agree):
- fixed windows: all of a request's windows are checked first and only counted when none is full, so a
  client that keeps hammering while refused does not push its own reset further away;
- quotas on work (uploads, evaluations, grader runs) count accepted work only: the request is counted when
  it starts (so concurrent requests cannot overshoot the quota) and given back when the API refuses it;
- stream slots: a sorted set of open streams per key, each entry refreshed while its stream lives and
  dropped after `STREAM_SLOT_TTL_S` without a refresh (a killed API process cannot leak slots for good).
"""

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

STREAM_SLOT_TTL_S = 60
STREAM_REFRESH_S = STREAM_SLOT_TTL_S / 3  # three chances to refresh before a live slot lapses

# KEYS[i]: a counter's key stem; ARGV: limit_1, window_1, limit_2, window_2, ...
# Returns {0, n_1, n_2, ...} when the request is counted (the counter of window i is KEYS[i]:n_i), else
# {seconds until the first full window resets}.
_HIT = """
local now = tonumber(redis.call('TIME')[1])
local keys = {}
for i, stem in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  local number = math.floor(now / window)
  local key = stem .. ':' .. number
  keys[i] = {key, window, number}
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= limit then
    return {window - (now % window)}
  end
end
local counted = {0}
for _, entry in ipairs(keys) do
  if redis.call('INCR', entry[1]) == 1 then
    redis.call('EXPIRE', entry[1], entry[2] + 1)
  end
  counted[#counted + 1] = entry[3]
end
return counted
"""

# KEYS: counters a refused request was counted in. A counter whose window has ended is gone: nothing to
# give back (DECR would recreate it at -1, without an expiry).
_GIVE_BACK = """
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then
    redis.call('DECR', key)
  end
end
return 1
"""

# KEYS[1]: the key's set of open streams; ARGV: slot id, limit, ttl. Returns 1 when the slot is taken.
_ACQUIRE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""

_REFRESH = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


@dataclass(frozen=True)
class Window:
    """At most `limit` requests per `seconds` (a fixed window aligned on the Redis clock)."""

    bucket: str
    limit: int
    seconds: int
    accepted_only: bool = False
    """A quota on work: a request the API refuses (any answer but 2xx/3xx) is given back."""


@dataclass(frozen=True)
class Hit:
    """What `Limiter.hit` did: refused (`retry_after` > 0), or counted in these accepted-only counters."""

    retry_after: int
    refundable: tuple[str, ...] = ()


class Limiter:
    """The Redis side of the limits; every call may raise a `redis.RedisError` (the caller decides)."""

    def __init__(self, client: "aioredis.Redis", prefix: str) -> None:
        self.client = client
        self.prefix = prefix  # this install's (SPPO_REDIS_PREFIX), so two installs on one Redis never mix
        self._hit: Any = client.register_script(_HIT)
        self._give_back: Any = client.register_script(_GIVE_BACK)
        self._acquire: Any = client.register_script(_ACQUIRE)
        self._refresh: Any = client.register_script(_REFRESH)

    async def hit(self, subject: str, windows: list[Window]) -> Hit:
        """Counts one request against every window, unless one is full: then its Retry-After in seconds."""
        active = [w for w in windows if w.limit > 0]
        if not active:
            return Hit(0)
        stems = [f"{self.prefix}:{w.bucket}:{subject}:{w.seconds}" for w in active]
        args = [value for w in active for value in (w.limit, w.seconds)]
        retry_after, *numbers = await self._hit(keys=stems, args=args)
        if retry_after:
            return Hit(max(int(retry_after), 1))
        counted = zip(stems, numbers, active, strict=True)
        return Hit(0, tuple(f"{stem}:{number}" for stem, number, w in counted if w.accepted_only))

    async def give_back(self, hit: Hit) -> None:
        """Uncounts a refused request from its accepted-only counters (those whose window is still open)."""
        if hit.refundable:
            await self._give_back(keys=list(hit.refundable))

    async def acquire_stream(self, subject: str, slot: str, limit: int) -> bool:
        if limit <= 0:
            return True
        key = self._streams_key(subject)
        return bool(await self._acquire(keys=[key], args=[slot, limit, STREAM_SLOT_TTL_S]))

    async def refresh_stream(self, subject: str, slot: str) -> None:
        await self._refresh(keys=[self._streams_key(subject)], args=[slot, STREAM_SLOT_TTL_S])

    async def release_stream(self, subject: str, slot: str) -> None:
        await self.client.zrem(self._streams_key(subject), slot)

    def _streams_key(self, subject: str) -> str:
        return f"{self.prefix}:streams:{subject}"
