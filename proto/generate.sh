#!/usr/bin/env bash
# Regenerates the committed protobuf/gRPC code from the .proto contracts.
# Usage: bash proto/generate.sh [OUT_DIR]   (default: proto/, in place)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here}"
python -m grpc_tools.protoc -I "$here" --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
  "$here"/splitft/v1/*.proto
