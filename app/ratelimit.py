"""Per-key rate limits and quotas kept in Redis, so every API process shares the same counters.

Two atomic Lua scripts, timed by the Redis clock (so API processes on different machines agree):
- fixed windows: all of a request's windows are checked first and only counted when none is full, so a
  client that keeps hammering while refused does not push its own reset further away;
- stream slots: a sorted set of open streams per key, each entry refreshed while its stream lives and
  dropped after `STREAM_SLOT_TTL_S` without a refresh (a killed API process cannot leak slots for good).
"""

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

STREAM_SLOT_TTL_S = 60
STREAM_REFRESH_S = STREAM_SLOT_TTL_S / 3  # three chances to refresh before a live slot lapses

# KEYS[i]: a counter's key stem; ARGV: limit_1, window_1, limit_2, window_2, ...
# Returns 0 when the request is counted, else the seconds until the first full window resets.
_HIT = """
local now = tonumber(redis.call('TIME')[1])
local keys = {}
for i, stem in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  local key = stem .. ':' .. math.floor(now / window)
  keys[i] = {key, window}
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= limit then
    return window - (now % window)
  end
end
for _, entry in ipairs(keys) do
  if redis.call('INCR', entry[1]) == 1 then
    redis.call('EXPIRE', entry[1], entry[2] + 1)
  end
end
return 0
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


class Limiter:
    """The Redis side of the limits; every call may raise a `redis.RedisError` (the caller decides)."""

    def __init__(self, client: "aioredis.Redis", prefix: str) -> None:
        self.client = client
        self.prefix = prefix  # this install's (SPPO_REDIS_PREFIX), so two installs on one Redis never mix
        self._hit: Any = client.register_script(_HIT)
        self._acquire: Any = client.register_script(_ACQUIRE)
        self._refresh: Any = client.register_script(_REFRESH)

    async def hit(self, subject: str, windows: list[Window]) -> int:
        """Counts one request against every window; 0 if allowed, else the Retry-After in seconds."""
        active = [w for w in windows if w.limit > 0]
        if not active:
            return 0
        keys = [f"{self.prefix}:{w.bucket}:{subject}:{w.seconds}" for w in active]
        args = [value for w in active for value in (w.limit, w.seconds)]
        retry_after = int(await self._hit(keys=keys, args=args))
        return max(retry_after, 1) if retry_after else 0

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
