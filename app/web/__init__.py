"""The browser dashboard: server-rendered pages over the same services as the JSON API."""

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.web import actions, forms, graders, pages, tryit
from app.web.render import STATIC_DIR


def install_dashboard(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # forms first: /jobs/new must win over /jobs/{job_id}
    for module in (forms, pages, actions, tryit, graders):
        app.include_router(module.router)
