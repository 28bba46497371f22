"""Dashboard pages: sign-in, the jobs list, a job's page (and its live panel), the compare view.

Each route reads through the same service functions as the JSON API (app/services/*), scoped to the
session's tenant, and renders a template; htmx requests get just the fragment that refreshes.
"""

import hashlib
import time
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request, Response

from app.api.deps import SessionDep, SettingsDep
from app.errors import AuthenticationError
from app.schemas.jobs import JobPublic
from app.schemas.progress import HEADLINE_METRICS
from app.services import dashboard, jobs, samples
from app.services.sessions import sign_in, sign_out
from app.web.render import PageRoute, redirect, render, signed_in
from app.web.session import (
    CsrfChecked,
    WebSessionDep,
    WebTenant,
    end_session,
    save_session,
    start_session,
)
from core.models import JobStatus

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PAGE_SIZE = 20
STATUSES = [s.value for s in JobStatus]
# scores in [0, 1]
BOUNDED_METRICS = ("rollout/reward_mean", "rollout/accuracy", "eval/pass@1", "eval/pass@1,eval/reward_mean")
CRITIC_ALGORITHMS = ("sppo", "ppo")
CRITIC_HYPERPARAMETERS = ("critic", "critic_learning_rate", "critic_learning_rate_multiplier", "gae_gamma",
                          "gae_lambda")  # fmt: skip
COMPARE_COLORS = 6  # --c1 .. --c6 in app.css
COMPARE_METRIC = "eval/pass@1"  # what a comparison is usually for: the held-out score


def _local_path(url: str | None) -> str:
    """Only same-site paths may be a post-sign-in target (no open redirect to another host)."""
    return url if url and url.startswith("/") and not url.startswith("//") else "/"


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    return render(request, "login.html", {"next": _local_path(next), "error": None})


@router.post("/login", dependencies=[CsrfChecked])
def login(
    request: Request,
    session: SessionDep,
    web: WebSessionDep,
    api_key: Annotated[str, Form(max_length=256)],
    next: Annotated[str, Form(max_length=512)] = "/",
) -> Response:
    try:
        token = sign_in(session, key=api_key)
    except AuthenticationError as error:
        context = {"next": _local_path(next), "error": error.message}
        return render(request, "login.html", context, status_code=401)
    if web.token is not None:  # signing in again replaces the session this browser had
        sign_out(session, token=web.token)
    start_session(web, token)
    return signed_in(request, redirect(request, _local_path(next)), web)


@router.post("/logout", dependencies=[CsrfChecked])
def logout(request: Request, session: SessionDep, settings: SettingsDep, web: WebSessionDep) -> Response:
    if web.token is not None:
        sign_out(session, token=web.token)
    end_session(web)
    response = redirect(request, "/login")
    save_session(request, response, web, settings)
    return response


@router.get("/")
def jobs_page(
    request: Request,
    session: SessionDep,
    tenant: WebTenant,
    status: Annotated[str | None, Query(max_length=32)] = None,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    status = status if status in STATUSES else None
    rows, has_more = jobs.list_jobs(
        session, tenant=tenant, after=after, limit=PAGE_SIZE, metadata={}, status=status
    )
    context: dict[str, Any] = {
        "jobs": [JobPublic.of(job) for job in rows],
        "latest": dashboard.latest_metrics(session, tenant=tenant, job_ids=[job.id for job in rows]),
        "scores": dashboard.latest_scores(session, tenant=tenant, job_ids=[job.id for job in rows]),
        "has_more": has_more,
        "next_after": rows[-1].id if rows else None,
        "status": status,
        "after": after,
        "statuses": STATUSES,
        "any_active": any(not dashboard.is_finished(job) for job in rows),
    }
    name = "_jobs_table.html" if request.headers.get("hx-request") else "jobs.html"
    return render(request, name, context)


def _job_context(session: SessionDep, tenant: WebTenant, job_id: str) -> dict[str, Any]:
    job = jobs.get_job(session, tenant=tenant, job_id=job_id)
    events, _ = jobs.list_events(session, tenant=tenant, job_id=job_id, after=None, limit=50)
    checkpoints, _ = jobs.list_checkpoints(session, tenant=tenant, job_id=job_id, after=None, limit=100)
    public = JobPublic.of(job)
    algorithm = public.method.get("reinforcement", {}).get("algorithm", "sppo")
    hyperparameters = public.method.get("reinforcement", {}).get("hyperparameters") or {}
    if algorithm not in CRITIC_ALGORITHMS:  # GRPO has no critic: its settings would only mislead
        hyperparameters = {k: v for k, v in hyperparameters.items() if k not in CRITIC_HYPERPARAMETERS}
    grader = public.method.get("reinforcement", {}).get("grader") or {}
    # a multi grader's sub-rewards are series of their own (reward/<name>)
    names = list(grader.get("graders") or {}) if grader.get("type") == "multi" else []
    return {
        "job": public,
        "sub_reward_metrics": ",".join(f"reward/{name}" for name in names),
        "sub_reward_labels": ",".join(names),
        "algorithm": algorithm,
        "has_critic": algorithm in CRITIC_ALGORITHMS,
        "active_alarms": [alarm for alarm in public.alarms if alarm.active],
        "hyperparameters": hyperparameters,
        "grader": grader,
        "events": events,
        "checkpoints": checkpoints,
        "latest_samples": samples.latest_samples(session, tenant=tenant, job_id=job_id, steps=1),
        "actions": dashboard.allowed_actions(job),
        "finished": dashboard.is_finished(job),
        "now": time.time(),  # elapsed and time left, refreshed with every poll of the panel
    }


@router.get("/jobs/{job_id}")
def job_page(request: Request, session: SessionDep, tenant: WebTenant, job_id: str) -> Response:
    context = _job_context(session, tenant, job_id)
    points = dashboard.metric_points(session, tenant=tenant, job_id=job_id)
    context["points"] = [p.as_json() for p in points]
    context["bounded_metrics"] = BOUNDED_METRICS
    return render(request, "job.html", context)


@router.get("/ui/jobs/{job_id}/panel")
def job_panel(request: Request, session: SessionDep, tenant: WebTenant, job_id: str) -> Response:
    """The parts of the job page that change (status, controls, checkpoints, events), polled by htmx."""
    return render(request, "_job_panel.html", _job_context(session, tenant, job_id))


def _samples(point: dashboard.Point) -> float | None:
    """Samples drawn up to this step (`perf/samples` is a running total; none before the first step)."""
    return 0.0 if point.step == 0 else point.metrics.get("perf/samples")


@router.get("/compare")
def compare_page(
    request: Request,
    session: SessionDep,
    tenant: WebTenant,
    job: Annotated[list[str] | None, Query(max_length=64)] = None,
    metric: Annotated[str, Query(max_length=64)] = COMPARE_METRIC,
) -> Response:
    metric = metric if metric in HEADLINE_METRICS else COMPARE_METRIC
    recent, _ = jobs.list_jobs(session, tenant=tenant, after=None, limit=50, metadata={})
    chosen = list(dict.fromkeys(job or []))[:8]
    series = []
    for job_id in chosen:
        picked = jobs.get_job(session, tenant=tenant, job_id=job_id)
        points = dashboard.metric_points(session, tenant=tenant, job_id=job_id)
        algorithm = picked.method.get("reinforcement", {}).get("algorithm", "sppo")
        series.append(
            {
                "id": job_id,
                # the suffix is the name people give a run; the colour follows the job, not its position
                "label": f"{picked.suffix} ({algorithm})"
                if picked.suffix
                else f"{algorithm} · {job_id[-8:]}",
                "color": int(hashlib.sha256(job_id.encode()).hexdigest(), 16) % COMPARE_COLORS,
                # [step, seconds, value, samples so far]: samples make algorithms of unequal steps comparable
                "points": [[p.step, p.elapsed_s, p.metrics.get(metric), _samples(p)] for p in points],
            }
        )
    context = {
        "recent": [JobPublic.of(j) for j in recent],
        "chosen": chosen,
        "metric": metric,
        "metrics": HEADLINE_METRICS,
        "bounded_metrics": BOUNDED_METRICS,
        "series": series,
    }
    return render(request, "compare.html", context)
