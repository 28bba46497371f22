"""The API process's cache of checked keys (app/admission.py `KeyCache`): hits, expiry, bound."""

from app.admission import KeyCache
from core.models import Tenant


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_checked_key_is_trusted_for_ttl_seconds_then_checked_again() -> None:
    clock = Clock()
    cache = KeyCache(1.0, clock=clock)
    tenant = Tenant(id="org-a", name="a")
    key = KeyCache.key_of("Bearer sk-a")
    assert cache.get(key) is None
    cache.put(key, tenant)
    clock.now += 0.999
    assert cache.get(key) is tenant
    clock.now += 0.001
    assert cache.get(key) is None
    assert cache.get(KeyCache.key_of("Bearer sk-b")) is None


def test_ttl_zero_keeps_nothing() -> None:
    cache = KeyCache(0.0)
    cache.put(KeyCache.key_of("Bearer sk-a"), Tenant(id="org-a", name="a"))
    assert cache.get(KeyCache.key_of("Bearer sk-a")) is None


def test_the_header_is_kept_only_as_its_hash() -> None:
    key = KeyCache.key_of("Bearer sk-secret")
    assert "sk-secret" not in key and len(key) == 64


def test_a_full_cache_drops_expired_entries_then_the_oldest() -> None:
    clock = Clock()
    cache = KeyCache(10.0, clock=clock)
    cache.MAX_ENTRIES = 3
    for name in "abc":
        cache.put(name, Tenant(id=f"org-{name}", name=name))
        clock.now += 4
    # at 112: a expired at 110, b and c still fresh; a goes first
    cache.put("d", Tenant(id="org-d", name="d"))
    assert [cache.get(k) is not None for k in "abcd"] == [False, True, True, True]
    cache.put("e", Tenant(id="org-e", name="e"))  # all fresh: the oldest (b) goes
    assert [cache.get(k) is not None for k in "bcde"] == [False, True, True, True]
