# splitft edge server: the frozen trunk of local Hugging Face models behind gRPC with mutual TLS.
#
#   docker build -f deploy/edge.Dockerfile -t splitft-edge .        # from PyPI: torch's CUDA build
#   docker build -f deploy/edge.Dockerfile -t splitft-edge:cpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .   # CPU-only torch
#   make wheelhouse && docker build -f deploy/edge.Dockerfile --build-arg WHEELHOUSE=1 .   # air-gapped
#   GPU edges: BASE_IMAGE from deploy/cuda-base.Dockerfile (docs/deploy.md, "GPU edges").
#
# Runs as uid 10001. Mount models read-only under /models and the certificates at /certs (ca.pem,
# edge.pem, edge.key, devices/healthcheck.{pem,key} for the health probe). gRPC on 50051, Prometheus
# /metrics on 9400. SIGTERM drains in-flight calls (10 s) and exits.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# 1: install from /wheelhouse only (`make wheelhouse`), never from an index.
ARG WHEELHOUSE=0
# Where torch comes from when not from the wheelhouse (empty: the default index, i.e. CUDA wheels).
ARG TORCH_INDEX_URL=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# .dockerignore lets through only the sources, pyproject.toml, constraints.txt and wheelhouse/.
COPY . .
RUN set -eu; torch_index=; \
    if [ "$WHEELHOUSE" = 1 ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/src/wheelhouse; \
    elif [ -n "$TORCH_INDEX_URL" ]; then torch_index="--index-url $TORCH_INDEX_URL"; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --quiet -c constraints.txt $torch_index torch; \
    /opt/venv/bin/pip install --quiet -c constraints.txt '.[edge]'; \
    /opt/venv/bin/splitft edge serve --help >/dev/null

FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 10001 --user-group splitft \
 && mkdir -p /models /certs /var/lib/splitft \
 && chown splitft:splitft /certs /var/lib/splitft
# Metadata first and the virtualenv last: one big layer, and cheap rebuilds of the rest.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
WORKDIR /home/splitft
EXPOSE 50051 9400
STOPSIGNAL SIGTERM
# The edge only answers mutual-TLS clients, so the probe presents the healthcheck device certificate.
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
  CMD ["/opt/venv/bin/splitft", "--log-level", "error", "edge", "health", "--address", "127.0.0.1:50051", "--certs", "/certs"]
ENTRYPOINT ["/opt/venv/bin/splitft", "edge", "serve"]
CMD ["--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9400", "--model-dir", "/models/model", "--certs", "/certs", "--token-issuer-key", "/certs/issuer.pub"]
USER 10001:10001
COPY --from=build /opt/venv /opt/venv
