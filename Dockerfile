# syntax=docker/dockerfile:1
#
# One image for the operator, the JobManager and the TaskManager.
#
#   docker build -t streamjob:0.1.0 .
#   docker run --rm streamjob:0.1.0 --version                    # entrypoint: streamjob
#   docker run --rm --entrypoint streamjob-operator streamjob:0.1.0 --help
#
# The JobManager and TaskManager pods run `streamjob jobmanager|taskmanager`, the
# operator's pod `streamjob-operator` (both on PATH). The examples are in
# /opt/streamjob/examples, importable as modules (`examples.clickstream`) or by path.
# Runs as UID/GID 10001 on a read-only root filesystem: the only writable path it needs
# is /tmp (HOME and the working directory), which pods mount as an emptyDir.
#
# The builder installs the locked dependencies (uv.lock, exactly) and the project as a
# wheel (--no-editable, with its C extensions compiled) into a venv, which is all the final
# stage copies: no compiler, no uv, no sources. tests/delivery/test_image.py runs this stage's uv commands outside
# Docker and checks the result.

# Both stages must use the same Python: the venv links to its interpreter.
# Pin harder with a digest, e.g. --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM ${PYTHON_IMAGE} AS builder
COPY --from=uv /uv /usr/local/bin/uv
# A C compiler for the runtime's C extensions (hatch_build.py); the final stage has none.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# STREAMJOB_NATIVE=1: a C extension that does not compile fails the build (hatch_build.py)
# instead of shipping the slower Python path.
ENV UV_PROJECT_ENVIRONMENT=/opt/streamjob/venv \
    STREAMJOB_NATIVE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /src
# The dependencies first, in their own layer: it is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
# Then the project itself, as a wheel (README.md is its package description; hatch_build.py
# compiles the C extensions into it).
COPY README.md hatch_build.py ./
COPY operator ./operator
COPY runtime ./runtime
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="streamjob" \
      org.opencontainers.image.description="Kubernetes-native stream processing in Python with Apache Flink's fault-tolerance model: the operator, JobManager and TaskManager" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"
RUN groupadd --system --gid 10001 streamjob \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
            --shell /usr/sbin/nologin streamjob
COPY --from=builder /opt/streamjob/venv /opt/streamjob/venv
COPY examples /opt/streamjob/examples
ENV PATH=/opt/streamjob/venv/bin:$PATH \
    PYTHONPATH=/opt/streamjob \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
WORKDIR /tmp
EXPOSE 6121 6123 8081
ENTRYPOINT ["streamjob"]
CMD ["--help"]
