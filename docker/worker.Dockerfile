# syntax=docker/dockerfile:1.7
# Training and evaluation workers and the model server (`sppo serve-models`): CUDA runtime with a CUDA build
# of torch. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t sppo-worker .
# CPU variant (no GPU needed):
#   docker build -f docker/worker.Dockerfile -t sppo-worker:cpu \
#     --build-arg BASE_IMAGE=ubuntu:24.04 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
# Optional extras, comma-separated: `--build-arg EXTRAS=s3` for an S3 artifact store, `vllm` for vLLM rollouts
# (SPPO_ROLLOUT_BACKEND=vllm) and serving.
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# torch first, from the index of the chosen CUDA (or CPU) build, pinned like the Makefile's.
RUN python3 -m venv /opt/sppo \
 && /opt/sppo/bin/pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml README.md ./
COPY app app
COPY core core
COPY worker worker
COPY cli cli
COPY inference inference
COPY jobspec jobspec
COPY grading grading
COPY migrations migrations
RUN /opt/sppo/bin/pip install ".${EXTRAS:+[${EXTRAS}]}"

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# bubblewrap: the sandbox of Python graders (docs/graders.md)
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 bubblewrap \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 sppo && install -d -o sppo -g sppo /data
ENV PATH=/opt/sppo/bin:$PATH PYTHONUNBUFFERED=1 SPPO_DATA_DIR=/data SPPO_LOG_FORMAT=json HF_HUB_OFFLINE=1
COPY --from=build /opt/sppo /opt/sppo
USER 10001
WORKDIR /home/sppo
# Healthy while this container's worker records its presence in Redis (every heartbeat interval).
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["python", "-m", "worker.healthcheck"]
# Exec form: SIGTERM reaches Celery (warm shutdown); the running job checkpoints and is requeued.
CMD ["sppo", "worker", "--queues", "training"]
