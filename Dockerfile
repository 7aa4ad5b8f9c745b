# syntax=docker/dockerfile:1
#
# Ferrum Infer: one image, three entry points. The entrypoint is `python -m`, so the command names
# the process:  docker run IMAGE scheduler | worker | gateway   (default: gateway).
#
# Build arguments:
#   TORCH_VARIANT=cpu   (default) PyTorch's CPU wheel from PyTorch's CPU index: a small image.
#   TORCH_VARIANT=cuda  PyTorch's CUDA build from PyPI; its wheels carry the CUDA runtime
#                       libraries, so the host needs only the NVIDIA driver and the NVIDIA
#                       container toolkit (no nvidia/cuda base image).
#   TORCH_INDEX_URL     overrides the index either variant installs torch from (a mirror, or a
#                       specific CUDA build such as .../whl/cu128).
#   PYTHON_IMAGE        the base image of both stages (Python 3.11, as pyproject requires).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

# Torch alone in the first layer: the largest download and the one that changes least often.
RUN set -eu; \
    case "$TORCH_VARIANT" in \
      cpu) index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
      cuda) index="${TORCH_INDEX_URL:-https://pypi.org/simple}" ;; \
      *) echo "TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 1 ;; \
    esac; \
    pip install --index-url "$index" "torch==${TORCH_VERSION}"

# The other dependencies, read from pyproject.toml, so that editing the code reuses this layer.
WORKDIR /app
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

COPY protos/ protos/
COPY services/ services/
COPY scheduler/ scheduler/
COPY worker/ worker/
COPY gateway/ gateway/
# Generated protobuf code is never committed: produced here exactly as the Makefile does.
# The editable install mirrors `make venv`, so the image runs the same layout the tests run.
RUN mkdir -p services/_generated \
 && python -m grpc_tools.protoc -Iservices/_generated=protos --python_out=. \
        --grpc_python_out=. --pyi_out=. services/_generated/ferrum.proto \
 && touch services/_generated/__init__.py \
 && pip install --no-deps --editable .

# The CPU kernels (worker/engine/cpu_kernels), both instruction sets, compiled here so that the
# runtime image needs no compiler: the AVX-512 set (decode attention, greedy argmax, rotary
# embedding, fused norms and MLP activation, compiled decode layers, bfloat16 prefill softmax) and
# the AVX2 set (the same in float32, without the argmax). A worker loads the set its CPU runs; a failed build is reported
# and costs only speed (torch's SDPA and operations are used instead). Building a set the builder's
# CPU cannot run is fine: it is compiled, never imported, here.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/* \
 && python -m worker.engine.cpu_kernels --any-cpu \
 && find /app /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} +


FROM ${PYTHON_IMAGE} AS runtime
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="ferrum-infer" \
      org.opencontainers.image.description="OpenAI-compatible LLM serving cluster: gateway, scheduler, workers" \
      io.ferrum-infer.torch-variant="${TORCH_VARIANT}"

# tini as PID 1 forwards SIGTERM (the processes drain on it) and reaps orphans.
# Debian package versions are not pinned: the archive drops old versions, which would break builds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ferrum \
 && useradd --system --uid 10001 --gid ferrum --create-home --home-dir /home/ferrum ferrum \
 && mkdir -p /models /cache \
 && chown ferrum:ferrum /models /cache

# /models holds model directories (mounted, or the demo model built into it at start);
# /cache holds the Hugging Face hub cache, the demo tokenizer cache and the CUDA/Triton kernel
# caches (mount a volume there), so the root filesystem can be read-only.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/cache/huggingface \
    XDG_CACHE_HOME=/cache \
    CUDA_CACHE_PATH=/cache/nv \
    TRITON_CACHE_DIR=/cache/triton \
    FERRUM_INFER_MODEL_PATH=/models/ferrum-demo \
    HEALTHCHECK_URL=http://127.0.0.1:8080/health

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001

# gateway HTTP, scheduler gRPC, scheduler metrics/health, worker metrics/health.
EXPOSE 8080 50051 9100 9200

# One probe for all three processes: each sets HEALTHCHECK_URL to its own health endpoint
# (docker-compose.yml does); the default is the gateway's.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]

ENTRYPOINT ["tini", "--", "python", "-m"]
CMD ["gateway"]
