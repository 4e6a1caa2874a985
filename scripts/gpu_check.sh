#!/usr/bin/env bash
# Everything a fresh machine with an NVIDIA GPU must verify, in one command (docs/gpu_check.md).
#
#   bash scripts/gpu_check.sh [--quick] [--python PY] [--venv DIR]
#
# From a clean clone with only Python and the CUDA toolkit (nvcc under $CUDA_HOME, default
# /usr/local/cuda):
#   1. install: a venv (default .venv-gpu) with CUDA torch, the package (.[dev,deploy]) and
#      onnxruntime-gpu; with --python PY an existing environment is used as it is and nothing
#      is installed;
#   2. the checks that run anywhere: the method tests (test/core/test_method.py) on CPU;
#   3. without a CUDA device: stop here, exit 3, saying so;
#   4. build the CUDA extension in place for this GPU's architecture (fails loudly);
#   5. the CUDA tests (test/core/test_window_attention_cuda.py, labels on CUDA), none may skip;
#   6. the SD-CPC engine on CUDA against CPU (labels agree; streaming == clip), fp32/fp16/bf16,
#      and the exported model on ONNX Runtime's TensorRT and CUDA providers (docs/deployment.md);
#   7. window-attention and engine benchmarks: one table.
# Exit status: 0 all passed, 1 a check failed, 3 no GPU (stopped after step 2).
# Budget: under 8 minutes on an H100/H200 (install excluded when --python is given; a torch
# download is mostly network time), --quick under 4.
set -euo pipefail
start=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's sdcpc_core, installed or not
QUICK="" PY="" VENV=".venv-gpu"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK="--quick"; shift ;;
    --python) PY="$2"; shift 2 ;;
    --venv) VENV="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
step() { echo; echo "== gpu_check [$(( $(date +%s) - start )) s] $*"; }
fail() { echo "gpu_check: FAILED: $*" >&2; exit 1; }

step "1/7 environment"
if [[ -z "$PY" ]]; then
  command -v python3 > /dev/null || fail "python3 not found"
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  PY="$VENV/bin/python"
  "$PY" -m pip install -q --upgrade pip setuptools wheel ninja
  # torch from PyPI is a CUDA build on Linux x86-64; SDCPC_TORCH pins another (e.g. torch==2.14.1)
  "$PY" -m pip install -q "${SDCPC_TORCH:-torch}"
  # build isolation keeps setup.py from compiling the extension here (no torch in the isolated
  # build env); step 4 builds it for this GPU only, which is several times faster
  "$PY" -m pip install -q -e ".[dev,deploy]"
  # the GPU build of ONNX Runtime (CUDA / TensorRT providers, checked in step 6) replaces the CPU
  # one; SDCPC_ORT pins another (e.g. an onnxruntime-gpu for an older CUDA)
  "$PY" -m pip uninstall -q -y onnxruntime
  "$PY" -m pip install -q "${SDCPC_ORT:-onnxruntime-gpu}" \
    || echo "gpu_check: onnxruntime-gpu did not install: step 6 will SKIP the ONNX Runtime GPU providers"
fi
"$PY" -c "import torch, sdcpc_core; print('torch', torch.__version__, 'CUDA', torch.version.cuda, '| sdcpc_core from', sdcpc_core.__file__)" \
  || fail "$PY cannot import torch and sdcpc_core"

step "2/7 CPU checks (method tests)"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" "$PY" -m pytest -q -p no:cacheprovider test/core/test_method.py \
  || fail "method tests on CPU"

step "3/7 CUDA device"
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  "$PY" -c "import torch; print('torch', torch.__version__, 'built for CUDA', torch.version.cuda)"
  command -v nvidia-smi > /dev/null && nvidia-smi -L || echo "(no nvidia-smi)"
  echo "gpu_check: STOPPED: no CUDA device is visible to torch, so the GPU checks (steps 4-7) did NOT run."
  echo "gpu_check: the CPU checks passed. Run this on a machine with an NVIDIA GPU and a CUDA build of torch."
  exit 3
fi
"$PY" -c "import torch; print(torch.cuda.get_device_name(), 'capability', torch.cuda.get_device_capability())"

step "4/7 build the CUDA extension"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
[[ -x "$CUDA_HOME/bin/nvcc" ]] || fail "no nvcc at $CUDA_HOME/bin/nvcc: install the CUDA toolkit or set CUDA_HOME"
arch="$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$arch}" SDCPC_REQUIRE_CUDA=1
export MAX_JOBS="${MAX_JOBS:-$(nproc)}" PATH="$(dirname "$PY"):$PATH"  # the venv's ninja
"$PY" -c "import ninja" 2> /dev/null || "$PY" -m pip install -q ninja || echo "(no ninja: slower build)"
"$PY" setup.py -q build_ext --inplace || fail "the CUDA extension did not build (log above)"
"$PY" -c "
import sys, torch
from sdcpc_core.ops import backend
sys.exit(0 if backend() == 'cuda' else 'the built extension does not import: backend() is ' + repr(backend()))
" || fail "extension import"

step "5/7 CUDA tests"
log="$(mktemp)"
rc=0
"$PY" -m pytest -q -p no:cacheprovider -rs test/core/test_window_attention_cuda.py \
    test/core/test_postprocess.py::test_labels_on_cuda_equal_the_definition > "$log" 2>&1 || rc=$?
cat "$log"
summary="$(tail -n 1 "$log")"
rm -f "$log"
[[ $rc -eq 0 ]] || fail "CUDA tests (exit $rc)"
[[ "$summary" != *skipped* ]] || fail "CUDA tests skipped (reasons above): $summary"

step "6/7 engine on CUDA against CPU"
"$PY" scripts/gpu_check.py engine $QUICK || fail "engine checks (FAIL lines above)"

step "7/7 benchmarks"
"$PY" scripts/gpu_check.py bench $QUICK || fail "benchmarks"
echo
echo "gpu_check: OK, all checks passed in $(( $(date +%s) - start )) s"
