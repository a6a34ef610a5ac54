# syntax=docker/dockerfile:1
# A worker on a GPU: SGLang's official CUDA image, with Sluice beside it. The worker starts
# `sglang.launch_server` as its child (SLUICE_SGLANG_ARGS passes flags through) or, with
# SLUICE_SGLANG_URL, talks to a server already running. Weights are never in the image: mount them.
# Build from the repository root: docker build -f deploy/docker/worker-sglang.Dockerfile -t sluice-worker-sglang .
# Pinned to the SGLang release pyproject's `sglang` extra accepts; its images need a CUDA 13 driver.
ARG SGLANG_IMAGE=lmsysorg/sglang:v0.5.23

FROM ${SGLANG_IMAGE} AS build
# --system-site-packages: SGLang, its CUDA torch and transformers stay the image's own; pip adds only
# what Sluice needs beyond them. --without-pip: the image's pip (seen through the system site) suffices.
RUN python3 -m venv --system-site-packages --without-pip /opt/sluice
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sluice sluice
COPY gateway gateway
COPY worker worker
RUN /opt/sluice/bin/python -m pip install --no-cache-dir .

FROM ${SGLANG_IMAGE}
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/sluice sluice \
 && mkdir /cache /adapters && chown 10001:10001 /cache /adapters
COPY --from=build /opt/sluice /opt/sluice
# Triton, FlashInfer and torch write compiled kernels under HOME, XDG_CACHE_HOME and /tmp; with the
# cache on a volume they survive restarts and the root filesystem can stay read-only.
ENV PATH=/opt/sluice/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/sluice \
    SLUICE_HOST=0.0.0.0 \
    SLUICE_WORKER_ENGINE=sglang \
    SLUICE_WORKER_METRICS_PORT=9091 \
    XDG_CACHE_HOME=/cache \
    SLUICE_CACHE_DIR=/cache/sluice \
    TRITON_CACHE_DIR=/cache/triton \
    HF_HOME=/cache/huggingface \
    HF_HUB_OFFLINE=1 \
    SLUICE_ADAPTER_DIR=/adapters
VOLUME ["/cache", "/adapters"]
USER 10001:10001
EXPOSE 9091
# /metrics answers only once SGLang has loaded the model and passed its first health check
# (SLUICE_SGLANG_READY_TIMEOUT allows 30 minutes).
HEALTHCHECK --interval=15s --timeout=5s --start-period=1800s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9091/metrics', timeout=4)"]
ENTRYPOINT ["sluice"]
CMD ["worker"]
