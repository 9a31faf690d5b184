#!/usr/bin/env bash
# `make docker-smoke`: build both images for real, bring docker-compose.yml up, train one device job
# against it from this host (deploy/smoke.py), check the adapter comes back over REST, check that
# `docker stop` is graceful, and tear everything down (volumes included), also on failure.
#
# Local mode (the default where ../shared/tools/local-docker.sh exists: machines that cannot pull
# images) starts a Docker engine, builds the stand-in bases splitft-base:bookworm and
# splitft-postgres:15-bookworm and installs from ./wheelhouse only. SMOKE_LOCAL=0 uses
# python:3.11-slim, postgres:16-bookworm and the package index instead.
# Everything it writes (logs, timings, the adapter) lands in runs/docker-smoke/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DOCKER=${DOCKER:-docker}
OUT=runs/docker-smoke
PROJECT=splitft-smoke
TAG=smoke
rm -rf "$OUT" && mkdir -p "$OUT"
log() { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if [ "${SMOKE_LOCAL:-$([ -f ../shared/tools/local-docker.sh ] && echo 1 || echo 0)}" = 1 ]; then
  log "local mode: engine and stand-in base images (no pulls), wheels from ./wheelhouse"
  export BASE_IMAGE=$(DOCKER=$DOCKER bash deploy/local/base-image.sh | tail -n 1)
  export POSTGRES_IMAGE=$(DOCKER=$DOCKER bash deploy/local/postgres-image.sh | tail -n 1)
  export WHEELHOUSE=1
  [ -n "$(ls wheelhouse/torch-* 2>/dev/null)" ] || make wheelhouse
else
  export BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim} POSTGRES_IMAGE=${POSTGRES_IMAGE:-postgres:16-bookworm}
  export WHEELHOUSE=${WHEELHOUSE:-0}
fi
if $DOCKER compose version >/dev/null 2>&1; then COMPOSE="$DOCKER compose"; else COMPOSE=docker-compose; fi
mkdir -p wheelhouse

build() {  # build NAME DOCKERFILE: time it, record the size
  local started=$SECONDS
  $DOCKER build --network host ${SMOKE_BUILD_FLAGS:-} -f "$2" -t "splitft-$1:$TAG" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg WHEELHOUSE="$WHEELHOUSE" . >"$OUT/build-$1.log" 2>&1 \
    || { tail -30 "$OUT/build-$1.log"; exit 1; }
  local size=$($DOCKER image inspect -f '{{.Size}}' "splitft-$1:$TAG")
  printf '%s image: %d MB, built in %d s (base %s)\n' "$1" $((size / 1000000)) $((SECONDS - started)) \
    "$BASE_IMAGE" | tee -a "$OUT/images.txt"
}
log "building images (${SMOKE_BUILD_FLAGS:-cached layers allowed})"
build control deploy/control-plane.Dockerfile
build edge deploy/edge.Dockerfile
if $DOCKER run --rm --network none --entrypoint /opt/venv/bin/python "splitft-control:$TAG" -c 'import torch' 2>/dev/null; then
  log "FAIL: torch is importable in the control-plane image"; exit 1
fi

free_port() { "$PYTHON" -c 'from splitft.local.launch import free_port; print(free_port())'; }
secret() { "$PYTHON" -c 'import secrets; print(secrets.token_hex(24))'; }
export SPLITFT_CONTROL_IMAGE=splitft-control:$TAG SPLITFT_EDGE_IMAGE=splitft-edge:$TAG
export POSTGRES_PASSWORD=$(secret) SPLITFT_OPERATOR_KEY=$(secret) SPLITFT_EDGE_SECRET=$(secret)
export POSTGRES_PORT=$(free_port) SPLITFT_CONTROL_PORT=$(free_port) SPLITFT_EDGE_PORT=$(free_port)
export SPLITFT_EDGE_METRICS_PORT=$(free_port) SPLITFT_CONTROL_BIND=127.0.0.1 SPLITFT_EDGE_BIND=127.0.0.1
export SPLITFT_EDGE_ADVERTISE=127.0.0.1:$SPLITFT_EDGE_PORT SPLITFT_EDGE_HOSTS="127.0.0.1 localhost"
export SPLITFT_MODEL_DIR=$("$PYTHON" -c 'from splitft.demo.sdk import default_model_dir; print(default_model_dir())')
compose() { $COMPOSE -p "$PROJECT" "$@"; }

teardown() {
  compose logs --no-color >"$OUT/compose.log" 2>&1 || true
  compose down -v --remove-orphans >>"$OUT/down.log" 2>&1 || true
}
trap 'status=$?; [ $status = 0 ] || { log "FAILED ($status); last compose logs:"; teardown; tail -40 "$OUT/compose.log"; }; exit $status' EXIT

health() { $DOCKER inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(compose ps -q "$1")"; }
log "compose up: postgres :$POSTGRES_PORT, control :$SPLITFT_CONTROL_PORT, edge :$SPLITFT_EDGE_PORT (metrics :$SPLITFT_EDGE_METRICS_PORT)"
started=$SECONDS
compose up -d --no-build >"$OUT/up.log" 2>&1 || { cat "$OUT/up.log"; exit 1; }
until [ "$(health edge)" = healthy ]; do
  [ $((SECONDS - started)) -lt 300 ] || { log "edge not healthy after 300 s"; exit 1; }
  sleep 2
done
log "stack healthy in $((SECONDS - started)) s: $(for s in postgres control edge; do printf '%s=%s ' $s "$(health $s)"; done)"
log "certs one-shot exited $($DOCKER inspect -f '{{.State.ExitCode}}' "$(compose ps -q certs)")"

# The operator's REST client verifies the control plane's HTTPS with the deployment CA (public);
# the device needs nothing but its enrollment token, which pins that CA.
$DOCKER cp "$(compose ps -q control)":/certs/ca.pem "$OUT/ca.pem"  # docker-compose v1 has no `cp`
log "device on the host: enroll, train one session over mutual TLS, fetch the adapter over REST (HTTPS)"
"$PYTHON" deploy/smoke.py --control-plane "https://127.0.0.1:$SPLITFT_CONTROL_PORT" --ca "$OUT/ca.pem" \
  --operator-key "$SPLITFT_OPERATOR_KEY" --model-dir "$SPLITFT_MODEL_DIR" --out "$OUT" 2>"$OUT/device.log" \
  | tee "$OUT/summary.json"

metric() {  # metric URL PREFIX...: the samples whose line starts with one of the prefixes
  "$PYTHON" -c 'import httpx, ssl, sys
verify = ssl.create_default_context(cafile=sys.argv[1])
for line in httpx.get(sys.argv[2], timeout=10, verify=verify).raise_for_status().text.splitlines():
    if line.startswith(tuple(sys.argv[3:])):
        print(line)' "$OUT/ca.pem" "$@"
}
log "edge metrics after the job:"
metric "http://127.0.0.1:$SPLITFT_EDGE_METRICS_PORT/metrics" splitft_edge_step_seconds_count \
  splitft_edge_received_bytes_total splitft_edge_sent_bytes_total splitft_edge_trunk_parameter_bytes \
  splitft_edge_active_sessions | sed 's/^/  /'
metric "https://127.0.0.1:$SPLITFT_CONTROL_PORT/metrics" 'splitft_jobs{' | sed 's/^/  control: /'

log "docker stop (SIGTERM) must be graceful: exit 0, well inside the grace period"
started=$SECONDS
compose stop >"$OUT/stop.log" 2>&1
for s in edge control postgres; do
  code=$($DOCKER inspect -f '{{.State.ExitCode}}' "$(compose ps -q $s)")
  log "  $s exited $code"
  [ "$code" = 0 ] || { log "FAIL: $s did not stop gracefully"; exit 1; }
done
log "stopped in $((SECONDS - started)) s"
compose logs --no-color edge 2>&1 | grep -h "shutting down" | sed 's/^/  /' || true
teardown
log "torn down (containers, network, volumes). OK"
