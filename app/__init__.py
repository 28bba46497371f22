"""SPPO Service HTTP API: FastAPI app, settings, database models, schemas and routes (never imports torch)."""
