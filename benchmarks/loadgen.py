"""A bounded, open-loop HTTP load generator and SSE subscribers for `uvicorn app.main:app` on loopback.

Open loop: request i is sent at t0 + i / rate whether or not earlier ones have answered, so a server that
stalls piles up work exactly as it would under real clients (a closed loop would hide a wedge by slowing
down). Bounded: at most `max_in_flight` requests at once and every request has a timeout, so the
generator itself always ends. Used by benchmarks/load.py and by the deadlock regression test.
"""

import asyncio
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx


@dataclass
class BurstResult:
    path: str
    rate: float
    duration_s: float
    sent: int = 0
    ok: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def errors(self) -> int:
        return self.sent - self.ok

    def quantile_ms(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        del data["latencies_ms"]
        data["errors"] = self.errors
        # Latencies of successful requests; a failed request counts as an error, not as a latency.
        for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
            value = self.quantile_ms(q)
            data[name] = None if value is None else round(value, 2)
        data["max_ms"] = round(max(self.latencies_ms), 2) if self.latencies_ms else None
        return data


def client(base_url: str, key: str | None, *, max_connections: int, timeout_s: float) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    # Idle connections are dropped before the server's keep-alive timeout (5 s) can race a reuse.
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections, keepalive_expiry=2.0
    )
    return httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=timeout_s)


async def burst(
    http: httpx.AsyncClient,
    path: str,
    *,
    rate: float,
    duration_s: float,
    max_in_flight: int = 500,
    ok_statuses: tuple[int, ...] = (200,),
) -> BurstResult:
    """GET `path` at `rate` requests/s for `duration_s`; every answer that is not in `ok_statuses` and
    every transport error or timeout is an error (keyed by status, or by the exception's class)."""
    result = BurstResult(path=path, rate=rate, duration_s=duration_s)
    statuses: Counter[str] = Counter()
    slots = asyncio.Semaphore(max_in_flight)

    async def one() -> None:
        async with slots:
            started = time.perf_counter()
            try:
                response = await http.get(path)
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
                return
            statuses[str(response.status_code)] += 1
            if response.status_code in ok_statuses:
                result.ok += 1
                result.latencies_ms.append((time.perf_counter() - started) * 1000)

    total = int(rate * duration_s)
    start = time.perf_counter()
    tasks = []
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    result.sent = total
    result.statuses = dict(sorted(statuses.items()))
    return result


@dataclass
class StreamResult:
    subscribers: int
    connected: int = 0
    events: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def __add__(self, other: "StreamResult") -> "StreamResult":
        """Both groups of clients as one (the figures of subscribers that ran side by side)."""
        return StreamResult(
            subscribers=self.subscribers + other.subscribers,
            connected=self.connected + other.connected,
            events=self.events + other.events,
            failures=dict(Counter(self.failures) + Counter(other.failures)),
            latencies_ms=self.latencies_ms + other.latencies_ms,
        )

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)

        def q(p: float) -> float | None:
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2) if ordered else None

        return {
            "subscribers": self.subscribers,
            "connected": self.connected,
            "events": self.events,
            "failures": self.failures,
            "delivery_p50_ms": q(0.5),
            "delivery_p99_ms": q(0.99),
            "delivery_max_ms": round(ordered[-1], 2) if ordered else None,
        }


async def subscribe(
    http: httpx.AsyncClient,
    path: str,
    *,
    subscribers: int,
    duration_s: float,
    sent_at_key: str,
    keys: tuple[str, ...] = (),
    series_path: str | None = None,
) -> StreamResult:
    """`subscribers` SSE clients on `path` for `duration_s`; the delivery latency of each `metrics` event is
    now minus the wall-clock stamp the publisher put in its metrics under `sent_at_key`. With `keys`, the
    clients take turns among them (a key may hold only so many open streams); else the client's own.
    With `series_path`, each client first loads the job's JSON series there and subscribes after its last
    step (`from=step-<N>`), as the dashboard's job page does."""
    result = StreamResult(subscribers=subscribers)
    failures: Counter[str] = Counter()

    async def one(i: int) -> None:
        headers = {"Authorization": f"Bearer {keys[i % len(keys)]}"} if keys else None
        try:
            params: dict[str, str] = {}
            if series_path is not None:
                series = await http.get(series_path, headers=headers)
                if series.status_code != 200:
                    failures[f"series {series.status_code}"] += 1
                    return
                if (last_step := series.json()["last_step"]) is not None:
                    params["from"] = f"step-{last_step}"
            async with http.stream("GET", path, headers=headers, params=params) as response:
                if response.status_code != 200:
                    failures[str(response.status_code)] += 1
                    return
                result.connected += 1
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        metrics = json.loads(line[6:]).get("metrics", {})
                        if sent_at_key in metrics:
                            result.events += 1
                            result.latencies_ms.append((time.time() - metrics[sent_at_key]) * 1000)
        except httpx.HTTPError as exc:
            failures[type(exc).__name__] += 1

    tasks = [asyncio.create_task(one(i)) for i in range(subscribers)]
    await asyncio.sleep(duration_s)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    result.failures = dict(failures)
    return result
