#!/usr/bin/env bash
# The local stand-in for python:3.11-slim on machines that cannot pull images: starts the Docker
# engine and builds splitft-base:bookworm with ../shared/tools/local-docker.sh, then repairs its root
# directory: that script tars a `mktemp -d` (mode 0700) as `/`, which locks every non-root user (the
# images run as uid 10001) out of the whole filesystem, and no Dockerfile layer can change the mode
# of `/`. Re-importing a flattened export gives `/` the usual 0755. Idempotent; prints the tag.
set -euo pipefail
DOCKER=${DOCKER:-docker}
here=$(cd "$(dirname "$0")" && pwd)
tag=$(bash "$here/../../../shared/tools/local-docker.sh" | tail -n 1)
mode=$("$DOCKER" run --rm --network host --entrypoint /usr/bin/stat "$tag" -c %a /)
if [ "$mode" != 755 ]; then
  cid=$("$DOCKER" create --network host "$tag" /bin/true)
  "$DOCKER" export "$cid" | "$DOCKER" import - "$tag" >/dev/null
  "$DOCKER" rm "$cid" >/dev/null
fi
echo "$tag"
