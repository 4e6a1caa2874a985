#!/usr/bin/env bash
# Compile check of the CUDA window-attention extension (CI; no GPU needed, the result is not run).
# Builds ONLY the extension (cuda_build.py, SDCPC_REQUIRE_CUDA=1) against torch==2.14.1 (a CUDA 13.0
# build) in its own venv, into a temporary build dir: nothing is written into the source tree.
#   SDCPC_CUDA_VENV   venv to create or reuse (default /tmp/sdcpc-cuda-venv)
#   CUDA_HOME         default /usr/local/cuda;  TORCH_CUDA_ARCH_LIST: default of cuda_build.py
set -euo pipefail
start=$(date +%s)
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SDCPC_CUDA_VENV:-/tmp/sdcpc-cuda-venv}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export SDCPC_REQUIRE_CUDA=1
export MAX_JOBS="${MAX_JOBS:-2}"

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "check_cuda_build: no nvcc at $CUDA_HOME/bin/nvcc" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.14.1')" 2>/dev/null; then
  "$venv/bin/pip" install -q torch==2.14.1
fi
"$venv/bin/python" -c "import setuptools" 2>/dev/null || "$venv/bin/pip" install -q setuptools
"$venv/bin/python" -c "import ninja" 2>/dev/null || "$venv/bin/pip" install -q ninja \
  || echo "check_cuda_build: ninja unavailable, building without it (slower)"
export PATH="$venv/bin:$PATH"  # the venv's ninja
echo "check_cuda_build: venv ready after $(( $(date +%s) - start )) s"

tmp="$(mktemp -d /tmp/sdcpc-cuda-build.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
cd "$root"
"$venv/bin/python" - "$tmp" <<'PY'
import sys

from setuptools import setup

import cuda_build

tmp = sys.argv[1]
ext = cuda_build.ext_modules()
assert ext, "cuda_build.ext_modules() returned nothing"
setup(name="sdcpc-cuda-check", ext_modules=ext, cmdclass=cuda_build.cmdclass(),
      script_args=["-q", "build_ext", "--build-lib", f"{tmp}/lib", "--build-temp", f"{tmp}/tmp"])
PY
so="$(find "$tmp/lib" -name '_window_attention_cuda*.so' | head -n 1)"
if [ -z "$so" ]; then
  echo "check_cuda_build: FAILED, no extension .so under $tmp/lib" >&2
  exit 1
fi
if [ -n "$(find "$root/sdcpc_core" -name '_window_attention_cuda*.so' -newer "$tmp" -print -quit)" ]; then
  echo "check_cuda_build: FAILED, the build wrote a .so into the source tree" >&2
  exit 1
fi
# load it (with the CUDA torch; no GPU needed): catches unresolved symbols that a link does not
"$venv/bin/python" - "$so" <<'PY'
import importlib.util
import sys

import torch  # noqa: F401  (loads libtorch / libc10_cuda for the extension)

spec = importlib.util.spec_from_file_location("_window_attention_cuda", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
assert callable(mod.forward) and callable(mod.backward), dir(mod)
PY
echo "check_cuda_build: OK, built and loaded $(basename "$so") ($(du -k "$so" | cut -f1) KiB) in $(( $(date +%s) - start )) s"
