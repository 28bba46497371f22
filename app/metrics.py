"""Prometheus text metrics for `GET /metrics`: process-local counters plus job gauges. No tenant data."""

import threading
from collections import Counter, defaultdict

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Job, JobStatus


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.latency_sum: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.latency_count: Counter[tuple[str, str]] = Counter()

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, path, status)] += 1
            self.latency_sum[(method, path)] += seconds
            self.latency_count[(method, path)] += 1

    def render(self, session: Session) -> str:
        lines = [
            "# HELP sppo_http_requests_total HTTP requests by method, route template and status.",
            "# TYPE sppo_http_requests_total counter",
        ]
        with self._lock:
            for (method, path, status), count in sorted(self.requests.items()):
                lines.append(
                    f'sppo_http_requests_total{{method="{method}",route="{path}",status="{status}"}} {count}'
                )
            lines += [
                "# HELP sppo_http_request_duration_seconds Time spent answering requests.",
                "# TYPE sppo_http_request_duration_seconds summary",
            ]
            for (method, path), total in sorted(self.latency_sum.items()):
                labels = f'method="{method}",route="{path}"'
                lines.append(f"sppo_http_request_duration_seconds_sum{{{labels}}} {total:.6f}")
                count = self.latency_count[(method, path)]
                lines.append(f"sppo_http_request_duration_seconds_count{{{labels}}} {count}")
        counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).tuples().all())
        pending = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.status == JobStatus.queued, Job.dispatched_at.is_(None))
        )
        lines += ["# HELP sppo_jobs Fine-tuning jobs by status (all tenants).", "# TYPE sppo_jobs gauge"]
        lines += [
            f'sppo_jobs{{status="{status.value}"}} {counts.get(status.value, 0)}' for status in JobStatus
        ]
        lines += [
            "# HELP sppo_jobs_undispatched Queued jobs not yet handed to the broker.",
            "# TYPE sppo_jobs_undispatched gauge",
            f"sppo_jobs_undispatched {pending or 0}",
        ]
        return "\n".join(lines) + "\n"


METRICS = Metrics()
