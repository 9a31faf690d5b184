#!/usr/bin/env bash
# The GPU check (issue 15): run on a machine with a CUDA GPU and PyTorch, from the repository root.
# Not part of `make test` (CI has no GPU). Wheels the machine lacks may be put in .whl/ beforehand.
#   bash tests/gpu/run.sh [OUT_DIR]
# Writes OUT_DIR/{env.txt,pytest.log,step_float32.json,step_bfloat16.json}. On an H200 the four
# edge processes of each bench step take 15-25 s each to start: give each bench 150 s or more.
set -uo pipefail
out="${1:-${OUT:-gpu-out}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
# splitft itself, editable (as the Makefile installs it), so `splitft.v1` (proto/) and
# `splitft_control` (services/) import by their names.
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . || exit 1
cd /tmp && python3 - >"$out/env.txt" 2>&1 <<'PY'
import torch, transformers, peft, accelerate, grpc
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
print("transformers", transformers.__version__, "peft", peft.__version__, "accelerate", accelerate.__version__, "grpcio", grpc.__version__)
PY
cd - >/dev/null
cat "$out/env.txt"
timeout "${PYTEST_TIMEOUT:-300}" python3 -m pytest -q -rA -s -p no:cacheprovider --timeout 90 \
  tests/system/test_accelerator.py tests/system/test_placement.py tests/unit/core/test_placement.py \
  tests/system/test_equivalence.py ${EXTRA_TESTS:-} 2>&1 | tee "$out/pytest.log" | grep -E "cuda equivalence|passed|failed|error|PASSED|FAILED|ERROR" | tail -40
for dtype in float32 bfloat16; do
  timeout "${BENCH_TIMEOUT:-200}" python3 -m splitft.cli bench step --device cuda --dtype "$dtype" --layers 8 \
    --hidden 1024 --batch 8 --tokens 256 --repeats 6 >"$out/step_${dtype}.json" 2>"$out/step_${dtype}.err"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1], {k: v['median'] for k, v in d['step_seconds'].items()})" "$out/step_${dtype}.json" || tail -5 "$out/step_${dtype}.err"
done
# Not yet here: `bench quantize` has no --device (it measures on the CPU), and torchao/bitsandbytes
# wheels for the GPU machine's torch would have to be carried in .whl/ for the quantized tests.
