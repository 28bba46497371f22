"""`GET /metrics` with prometheus-client. No tenant data (job ids only, of running jobs).

HTTP series are kept by the middleware of each API process; with several (`SPPO_API_WORKERS`), `sppo
serve` points prometheus-client's multiprocess mode at a shared directory (`PROMETHEUS_MULTIPROC_DIR`)
and a scrape sums every process's files, whichever process answers it. Everything else is read
at scrape time from where the truth is, so no series is lost with a process and any API replica reports
the same values: jobs from the DB, queue depth and worker presence from Redis (core/presence.py), and the
training rates of each running job from the last two step records in its Redis metrics stream.
"""

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any, cast

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.models import Job, JobStatus
from core.presence import read_presence
from core.queues import EVALUATION_QUEUE, broker_lists, training_queues
from core.settings import get_settings
from core.streams import decode_step, metrics_stream_key

log = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
disable_created_metrics()  # type: ignore[no-untyped-call]  # `*_created` series double the output and no dashboard here reads them

HTTP_REGISTRY = CollectorRegistry()
HTTP_REQUESTS = Counter(
    "sppo_http_requests",
    "HTTP requests by method, route template and status.",
    ["method", "route", "status"],
    registry=HTTP_REGISTRY,
)
HTTP_LATENCY = Histogram(
    "sppo_http_request_duration_seconds",
    "Time spent answering requests, by method and route template (streams: until they end).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=HTTP_REGISTRY,
)
_MIB = 2**20  # the engine reports memory in MiB


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_LATENCY.labels(method, route).observe(seconds)


def training_rates(latest: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, float]:
    """Steps, samples and tokens per second between two step records of a job (`decode_step` dicts),
    or since the start of the run when there is only one; empty when no time has passed."""
    now_m = latest["metrics"]
    then_m = previous["metrics"] if previous else {}
    then_step = previous["step"] if previous else 0
    seconds = now_m.get("perf/elapsed_s", 0.0) - then_m.get("perf/elapsed_s", 0.0)
    if seconds <= 0:
        return {}
    return {
        "steps": (latest["step"] - then_step) / seconds,
        "samples": (now_m.get("perf/samples", 0.0) - then_m.get("perf/samples", 0.0)) / seconds,
        "tokens": (now_m.get("perf/tokens", 0.0) - then_m.get("perf/tokens", 0.0)) / seconds,
    }


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


class ServiceCollector(Collector):
    """The service's state at scrape time: one instance per scrape, holding that scrape's session."""

    def __init__(self, session: Session, client: "redis.Redis") -> None:
        self.session = session
        self.client = client

    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        try:
            yield from self._redis_series()
        except redis.RedisError:  # /ready reports Redis; the DB series are still worth exposing
            log.warning("metrics: Redis unreachable; queue, worker and training series left out")

    def _jobs(self) -> Iterator[Metric]:
        counts = dict(
            self.session.execute(select(Job.status, func.count()).group_by(Job.status)).tuples().all()
        )
        jobs = _gauge("sppo_jobs", "Fine-tuning jobs by status (all tenants).", ["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs
        pending = self.session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.status == JobStatus.queued, Job.dispatched_at.is_(None))
        )
        undispatched = _gauge("sppo_jobs_undispatched", "Queued jobs not yet handed to the broker.")
        undispatched.add_metric([], pending or 0)
        yield undispatched

    def _redis_series(self) -> Iterator[Metric]:
        depth = _gauge("sppo_queue_depth", "Tasks waiting in each Celery queue (not yet taken).", ["queue"])
        for queue in (*training_queues(get_settings()), EVALUATION_QUEUE):
            pipe = self.client.pipeline()
            for key in broker_lists(queue):
                pipe.llen(key)
            depth.add_metric([queue], sum(pipe.execute()))
        yield depth
        yield from self._workers()
        yield from self._training()

    def _workers(self) -> Iterator[Metric]:
        last_seen = _gauge(
            "sppo_worker_last_seen_timestamp_seconds",
            "Last heartbeat of each worker (Unix s).",
            ["worker"],
        )
        busy = _gauge("sppo_worker_busy", "1 while the worker runs a task.", ["worker"])
        devices = _gauge("sppo_worker_devices", "Devices each worker offers one job.", ["worker"])
        gpu = _gauge(
            "sppo_worker_gpu_memory_bytes",
            "CUDA memory of each GPU worker's device (allocated by tensors, reserved by the allocator).",
            ["worker", "device", "kind"],
        )
        for worker_id, state in sorted(read_presence(self.client).items()):
            last_seen.add_metric([worker_id], float(state["last_seen"]))
            busy.add_metric([worker_id], 1.0 if state.get("task_id") else 0.0)
            devices.add_metric([worker_id], float(state.get("devices", 1)))
            for kind in ("allocated", "reserved"):
                if f"gpu_memory_{kind}_bytes" in state:
                    value = float(state[f"gpu_memory_{kind}_bytes"])
                    gpu.add_metric([worker_id, str(state.get("device")), kind], value)
        yield from (last_seen, busy, devices, gpu)

    def _training(self) -> Iterator[Metric]:
        families = {
            "step": _gauge("sppo_job_current_step", "Last finished step of each running job.", ["job_id"]),
            "steps": _gauge("sppo_job_steps_per_second", "Training steps per second.", ["job_id"]),
            "samples": _gauge("sppo_job_samples_per_second", "Sampled responses per second.", ["job_id"]),
            "tokens": _gauge("sppo_job_tokens_per_second", "Prompt and response tokens per s.", ["job_id"]),
            "memory": _gauge(
                "sppo_job_peak_memory_bytes",
                "Peak memory of each running job's worker: CUDA memory on a GPU, resident memory on CPU.",
                ["job_id"],
            ),
        }
        running = self.session.scalars(select(Job.id).where(Job.status == JobStatus.running)).all()
        for job_id in sorted(running):
            records = cast(list[Any], self.client.xrevrange(metrics_stream_key(job_id), count=2))
            if not records:
                continue
            steps = [decode_step(fields) for _, fields in records]
            latest, previous = steps[0], steps[1] if len(steps) > 1 else None
            families["step"].add_metric([job_id], latest["step"])
            for name, value in training_rates(latest, previous).items():
                families[name].add_metric([job_id], value)
            if "perf/peak_memory_mb" in latest["metrics"]:
                families["memory"].add_metric([job_id], latest["metrics"]["perf/peak_memory_mb"] * _MIB)
        yield from families.values()


def render(session: Session, client: "redis.Redis") -> bytes:
    """The Prometheus text exposition of the HTTP series (`http_registry`) and the service's state."""
    state = CollectorRegistry()
    state.register(ServiceCollector(session, client))
    return generate_latest(http_registry()) + generate_latest(state)


def http_registry() -> CollectorRegistry:
    """This process's HTTP series, or those of every process of `sppo serve` in multiprocess mode."""
    if not os.environ.get(MULTIPROC_ENV):
        return HTTP_REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
