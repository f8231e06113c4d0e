# syntax=docker/dockerfile:1
# The voxgate server image: `voxgate serve` as a non-root numeric user on a read-only root
# filesystem. Build: docker build -t voxgate:0.1.0 --build-arg VERSION=0.1.0 .
# The chart (deploy/helm/voxgate) mounts the only writable paths: /tmp and the ledger spool.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --- builder: the wheel, then a venv holding it and its runtime dependencies (no extras) ---
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY policies ./policies
COPY emulator ./emulator
COPY migrations ./migrations
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/voxgate \
 && /opt/voxgate/bin/pip install /dist/voxgate-*.whl \
 && /opt/voxgate/bin/pip uninstall --yes pip

# --- runtime: the venv only; no compiler, no source tree, no pip ---
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="voxgate" \
      org.opencontainers.image.description="Multi-tenant session gateway and cost-control proxy for the OpenAI Realtime API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/operations.md in the source tree"

RUN groupadd --system --gid 10001 voxgate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin voxgate \
 && mkdir -p /var/lib/voxgate/spool \
 && chown -R 10001:10001 /var/lib/voxgate
COPY --from=builder /opt/voxgate /opt/voxgate

# Bytecode was compiled at install time, so nothing writes .pyc at run time (read-only root).
# HOME points at /tmp, the one scratch mount, for any library that wants a cache directory.
ENV PATH="/opt/voxgate/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    VOXGATE_HOST=0.0.0.0 \
    VOXGATE_PORT=8000 \
    VOXGATE_SPOOL_DIR=/var/lib/voxgate/spool

# Liveness and readiness are the orchestrator's: Kubernetes probes /healthz and /readyz.
USER 10001:10001
WORKDIR /var/lib/voxgate
EXPOSE 8000
VOLUME ["/var/lib/voxgate/spool", "/tmp"]
ENTRYPOINT ["voxgate"]
CMD ["serve"]
