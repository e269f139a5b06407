#!/usr/bin/env bash
# The GPU check, one script, under 10 minutes on one GPU: the CUDA parity / lossless /
# batch = single tests, then the engine and speculation benches on the device. Tables go to
# stdout and, when $OUT is set, to files under it.
#
#     bash bench/device_check.sh              # on a machine with a CUDA GPU
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$(mktemp -d)}"
python -c "import decodekit" 2>/dev/null || python -m pip install --quiet -e ".[test,bench]"
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this check needs a GPU"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PY
step() { echo; echo "== $1"; shift; timeout 240 "$@" 2>&1 | tee -a "$out/device_check.txt"; }
step "CUDA parity, lossless speculation, batch = single" python -m pytest -q tests/integration/test_cuda.py
step "engine vs transformers, GPT-2 4x256, float32" python bench/bench_engine.py --device cuda --repeats 3
step "engine vs transformers, stdlib-code, bfloat16" python bench/bench_engine.py --device cuda --dtype bfloat16 --model stdlib-code --repeats 3
step "speculation on the GPU" python bench/bench_speculative.py --device cuda --prompts 4 --repeats 2
echo; echo "results in $out/device_check.txt"
