#!/usr/bin/env bash
# Print a .env for docker-compose.yml with fresh secrets:
#   bash deploy/compose-env.sh > .env && chmod 600 .env
# then set SPLITFT_MODEL_DIR (and SPLITFT_EDGE_HOSTS / SPLITFT_EDGE_ADVERTISE / SPLITFT_CONTROL_HOSTS
# to the names or addresses devices dial). Keep .env out of version control: it holds the operator key and the edge secret.
set -euo pipefail
secret() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }  # 48 hex characters, URL-safe
cat <<ENV
# secrets (no defaults: compose and the control plane refuse to start without them)
POSTGRES_PASSWORD=$(secret)
SPLITFT_OPERATOR_KEY=$(secret)
SPLITFT_EDGE_SECRET=$(secret)
# the model the edge serves, and the name jobs use for it
SPLITFT_MODEL_DIR=/path/to/models/all-MiniLM-L6-v2
SPLITFT_MODEL_NAME=minilm
# names or addresses devices dial: they go into the edge certificate (at first start only)
SPLITFT_EDGE_HOSTS=127.0.0.1 localhost
SPLITFT_EDGE_ADVERTISE=127.0.0.1:50051
# names or addresses devices and the edge use for the control plane (HTTPS certificate, first start
# only; keep 127.0.0.1: the edge and the health check dial it)
SPLITFT_CONTROL_HOSTS=127.0.0.1 localhost
# host ports (network_mode: host)
POSTGRES_PORT=5432
SPLITFT_CONTROL_PORT=8080
SPLITFT_EDGE_PORT=50051
SPLITFT_EDGE_METRICS_PORT=9400
ENV
