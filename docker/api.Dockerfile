# syntax=docker/dockerfile:1.7
# The API (and the one-shot migrations): slim Python, no torch. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t sppo-api .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Optional extras, space-separated: `--build-arg EXTRAS=s3` for an S3 artifact store.
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/sppo
COPY pyproject.toml README.md ./
COPY docker/api_requirements.py docker/
# Dependencies first (a layer that survives code changes), then the wheel itself without them.
RUN python docker/api_requirements.py pyproject.toml ${EXTRAS} > /tmp/requirements.txt \
 && /opt/sppo/bin/pip install -r /tmp/requirements.txt
COPY app app
COPY core core
COPY worker worker
COPY cli cli
COPY jobspec jobspec
COPY grading grading
COPY migrations migrations
RUN /opt/sppo/bin/pip install --no-deps .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/sppo/bin:$PATH PYTHONUNBUFFERED=1 \
    SPPO_DATA_DIR=/data SPPO_HOST=0.0.0.0 SPPO_PORT=8000 SPPO_LOG_FORMAT=json
# bubblewrap: the graders API runs Python graders in the same sandbox as training (docs/graders.md)
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 sppo && install -d -o sppo -g sppo /data
COPY --from=build /opt/sppo /opt/sppo
USER 10001
WORKDIR /home/sppo
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['SPPO_PORT']}/ready\", timeout=4)"]
# Exec form: SIGTERM reaches uvicorn, which drains requests for SPPO_SHUTDOWN_DRAIN_S.
CMD ["sppo", "serve"]
