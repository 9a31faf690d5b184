#!/usr/bin/env bash
# A local stand-in for the official `postgres` image, for machines that cannot pull images (this
# project's dev machines: see ../shared/tools/local-docker.sh). Debian bookworm's PostgreSQL 15 from
# debootstrap, with an entrypoint that honours the official image's contract (POSTGRES_USER,
# POSTGRES_PASSWORD, POSTGRES_DB, PGDATA, PGPORT; initdb on first start). Real deployments use
# `postgres:16-bookworm` (the compose default) and never need this.
# Usage: bash deploy/local/postgres-image.sh   (idempotent; prints the image tag)
set -euo pipefail
TAG=${POSTGRES_LOCAL_TAG:-splitft-postgres:15-bookworm}
ROOTFS_TAG=splitft-postgres-rootfs:bookworm
DOCKER=${DOCKER:-docker}
here=$(cd "$(dirname "$0")" && pwd)
if ! "$DOCKER" image inspect "$ROOTFS_TAG" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { echo "needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include=postgresql-15,ca-certificates bookworm "$root" \
    >/tmp/debootstrap-postgres.log 2>&1 || { echo "debootstrap failed; see /tmp/debootstrap-postgres.log" >&2; exit 1; }
  chmod 0755 "$root"  # mktemp -d made it 0700: as /, that locks every non-root user out
  rm -rf "$root/var/lib/postgresql/15/main" "$root/etc/postgresql/15/main" "$root/var/cache/apt/archives/"*.deb
  tar -C "$root" -c . | "$DOCKER" import - "$ROOTFS_TAG" >/dev/null
fi
"$DOCKER" build -q -t "$TAG" -f "$here/postgres.Dockerfile" "$here" >/dev/null
echo "$TAG"
