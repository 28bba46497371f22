"""The "Try it" box of a succeeded job's page: a prompt to the job's fine-tuned model, answered as the
stream of `POST /v1/chat/completions` (same resolution and proxy), authenticated by the session cookie
and CSRF-checked like every dashboard POST (the page's script sends the X-CSRF-Token header)."""

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from app.api.deps import SessionDep, SettingsDep
from app.errors import Conflict
from app.schemas.common import StrictModel
from app.services.inference import proxy_generate, resolve_model
from app.services.jobs import get_job
from app.web.render import PageRoute
from app.web.session import CsrfChecked, WebTenant

router = APIRouter(route_class=PageRoute, include_in_schema=False)
MAX_PROMPT_CHARS = 4000


class TryIt(StrictModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)


@router.post("/ui/jobs/{job_id}/try", dependencies=[CsrfChecked])
async def try_model(
    body: TryIt, session: SessionDep, settings: SettingsDep, tenant: WebTenant, job_id: str
) -> Response:
    job = await run_in_threadpool(get_job, session, tenant=tenant, job_id=job_id)
    if job.fine_tuned_model is None:
        raise Conflict("The job has no fine-tuned model yet.", param="job_id")
    target = await run_in_threadpool(
        resolve_model, session, settings=settings, tenant=tenant, model=job.fine_tuned_model
    )
    session.close()  # no DB connection is held while the model generates
    request = {"kind": "chat", "messages": [{"role": "user", "content": body.prompt}], "max_tokens": None,
               "temperature": 0.0, "top_p": 1.0, "n": 1, "stop": [], "seed": None, "stream": True,
               "include_usage": False}  # fmt: skip
    return await proxy_generate(settings=settings, target=target, request=request, stream=True)
