# syntax=docker/dockerfile:1
# Kubetune operator image: `kubetune operator` (kopf, the kubernetes client, prometheus-client).
# Slim on purpose: only the `operator` extra from uv.lock and the operator/ sources, no torch.
#
#   docker build -t kubetune-operator:0.1.0 .
#   docker run --rm kubetune-operator:0.1.0 operator --help
#
# The Python steps are the ones `make setup` runs (`uv sync --frozen` from the same uv.lock),
# restricted to one extra; tests/unit/test_dockerfiles.py checks that they stay in step and
# runs them outside Docker, so a green CI means the locked install works.
# For reproducible production builds, pin the base image by digest as well
# (python:3.11-slim-bookworm@sha256:...).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_VERSION=0.13.9

# Layers, so that a change of our sources (or the README) rebuilds in seconds: the build stage
# installs only the locked dependencies (inputs: pyproject.toml and uv.lock), the runtime stage
# copies that venv and installs the project into it without touching a dependency.

# --- build: resolve the locked dependencies into /app/.venv ---------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /app
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project --extra operator

# --- runtime: the venv on a clean slim base, as a non-root user ---------------------------------
FROM ${PYTHON_IMAGE}
RUN groupadd --gid 1000 kubetune \
    && useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin kubetune
COPY --from=build /app/.venv /app/.venv
# The project, non-editable, into that venv (uv bind-mounted from the build stage, not in the
# image). Only operator/: the operator imports nothing of the trainer or server (tests/unit/
# test_import_graph.py), and the wheel build skips the trainer_image packages it cannot find.
WORKDIR /app
ENV UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
COPY pyproject.toml uv.lock README.md ./
COPY operator/ operator/
RUN --mount=type=bind,from=build,source=/usr/local/bin/uv,target=/usr/local/bin/uv \
    uv sync --frozen --no-dev --no-editable --extra operator \
    && python -m compileall -q /app/.venv/lib/python3.11/site-packages/kubetune_*
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
# /metrics and kopf's /healthz (the chart's defaults).
EXPOSE 8080 8081
ENTRYPOINT ["kubetune"]
CMD ["operator"]
