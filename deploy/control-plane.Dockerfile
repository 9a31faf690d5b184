# splitft control plane: the FastAPI REST service (jobs, devices, edges, scheduler). No torch.
#
#   docker build -f deploy/control-plane.Dockerfile -t splitft-control .
#   make wheelhouse && docker build -f deploy/control-plane.Dockerfile --build-arg WHEELHOUSE=1 .
#
# Runs as uid 10001 with its data (SQLite if no SPLITFT_DB_URL, the token issuer key) in /data and
# the deployment CA at SPLITFT_CERTS_DIR. Needs SPLITFT_EDGE_SECRET and SPLITFT_OPERATOR_KEY (16+
# characters, not defaults). REST on 8080 (HTTPS with SPLITFT_TLS_CERTS_DIR=/certs: control.pem,
# control.key): /healthz, /metrics, /docs. uvicorn stops on SIGTERM.
# The same image runs `splitft certs ...` and `splitft control migrate|keys ...`.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# 1: install from /wheelhouse only (`make wheelhouse`), never from an index.
ARG WHEELHOUSE=0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# .dockerignore lets through only the sources, pyproject.toml, constraints.txt and wheelhouse/.
COPY . .
RUN set -eu; \
    if [ "$WHEELHOUSE" = 1 ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/src/wheelhouse; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --quiet -c constraints.txt '.[control]'; \
    if /opt/venv/bin/python -c 'import torch' 2>/dev/null; then echo 'torch in the control plane' >&2; exit 1; fi; \
    /opt/venv/bin/splitft control serve --help >/dev/null

FROM ${BASE_IMAGE}
# /edge-certs: where compose's one-shot certs service copies what the edge may hold (no ca.key); a
# named volume mounted there starts with this directory's owner.
RUN useradd --create-home --uid 10001 --user-group splitft \
 && mkdir -p /data /certs /edge-certs \
 && chown splitft:splitft /data /certs /edge-certs
# Metadata first and the virtualenv last: one big layer, and cheap rebuilds of the rest.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 SPLITFT_DATA_DIR=/data
WORKDIR /home/splitft
EXPOSE 8080
STOPSIGNAL SIGTERM
# HTTPS (verified against the deployment CA in it) when SPLITFT_TLS_CERTS_DIR is set, else HTTP.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/opt/venv/bin/python", "-c", "import os, ssl, sys, urllib.request as u; d = os.environ.get('SPLITFT_TLS_CERTS_DIR'); ctx = ssl.create_default_context(cafile=d + '/ca.pem') if d else None; sys.exit(u.urlopen(('https' if d else 'http') + '://127.0.0.1:8080/healthz', timeout=4, context=ctx).status != 200)"]
ENTRYPOINT ["/opt/venv/bin/splitft", "control", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8080"]
USER 10001:10001
COPY --from=build /opt/venv /opt/venv
