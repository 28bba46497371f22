"""The hostile-input tests talk to the same live API server as tests/app (one uvicorn, one data dir)."""

from tests.app.conftest import api, key, server, upload

__all__ = ["api", "key", "server", "upload"]
