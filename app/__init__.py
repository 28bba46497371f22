"""SPPO Service HTTP layer: the FastAPI app, routes, schemas, middleware, dashboard and the services behind
them (never imports torch). What the workers and the model server share with it lives in `core`."""
