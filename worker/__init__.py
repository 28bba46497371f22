"""Celery worker that runs the training engine for jobs."""
