# syntax=docker/dockerfile:1
# The gateway: stateless HTTP, no model and no torch, so it stays small.
# Build from the repository root: docker build -f deploy/docker/gateway.Dockerfile -t sluice-gateway .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# A virtual environment is one folder the runtime stage can copy whole, without pip or build files.
RUN python -m venv /opt/sluice
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sluice sluice
COPY gateway gateway
COPY worker worker
RUN /opt/sluice/bin/pip install --no-cache-dir .

FROM ${PYTHON_IMAGE}
# A fixed numeric uid: Kubernetes' runAsNonRoot can only verify a number.
# /adapters: the LoRA adapter store the gateway writes uploads to and workers read (a shared volume).
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent sluice \
 && mkdir /adapters && chown 10001:10001 /adapters
COPY --from=build /opt/sluice /opt/sluice
ENV PATH=/opt/sluice/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SLUICE_HOST=0.0.0.0 \
    SLUICE_PORT=8080 \
    SLUICE_ADAPTER_DIR=/adapters
VOLUME ["/adapters"]
USER 10001:10001
EXPOSE 8080
# /healthz, not /readyz: a gateway whose Redis is away is alive, only not ready (the orchestrator decides).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["sluice"]
CMD ["gateway"]
