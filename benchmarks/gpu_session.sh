#!/usr/bin/env bash
# Everything that needs a GPU, in one go: the GPU conformance suite, the GPU-only tests and the GPU benchmarks.
#
#     bash benchmarks/gpu_session.sh [check|bench|all]     (default all; results and logs under $OUT or ./gpu-results)
#
# check (about 5 minutes on an H200): `sophia-ref gpu-check` on GPT-2 small, the CUDA tests of tests/test_gpu_check.py,
# and the CPU-tensor kernel tests of tests/test_fast.py under Triton's interpreter. bench (about 3 minutes):
# benchmarks/gpu_step.py. Runs from a checkout with the machine's own torch and triton (no install needed);
# exits non-zero if any part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
stage=${1:-all}
status=0
run() {  # name, command...: the command's output to the terminal and to $out/name.log; remember a failure
    local name=$1; shift
    echo "+ $*"
    "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "[$name: exit $rc]"
    [ "$rc" -eq 0 ] || status=1
}
"$python" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
    | tee "$out/versions.txt"
if [ "$stage" = all ] || [ "$stage" = check ]; then
    run gpu-check "$python" -m sophia_ref.cli gpu-check --json "$out/gpu-check.json"
    run pytest-gpu "$python" -m pytest -q -p no:cacheprovider tests/test_gpu_check.py
    run pytest-fast env TRITON_INTERPRET=1 "$python" -m pytest -q -p no:cacheprovider tests/test_fast.py tests/test_fast_gnb.py
fi
if [ "$stage" = all ] || [ "$stage" = bench ]; then
    run gpu-step "$python" benchmarks/gpu_step.py --json "$out/gpu-step.json"
fi
exit $status
