"""The ASGI application `app.main:app`: wiring only (app factory, routers, middleware, error handlers)."""

from fastapi import FastAPI


def create_app() -> FastAPI:
    return FastAPI(title="SPPO Service", version="0.1.0")


app = create_app()
