"""Decides whether setup.py builds the CUDA window-attention extension, and how.

``ext_modules()`` returns ``[CUDAExtension("sdcpc_core.ops._window_attention_cuda")]`` when torch is a
CUDA build and nvcc exists under CUDA_HOME, else ``[]`` with one printed message (the pure-PyTorch path
is then used). ``cmdclass()`` returns the matching ``build_ext`` (torch's BuildExtension; a failed build
is reported and skipped). ``SDCPC_REQUIRE_CUDA=1`` turns a skip or a failed build into an error.

Importing this module never needs torch: without torch both functions return empty values.
Environment (set here explicitly):
- ``CUDA_HOME`` defaults to /usr/local/cuda (torch otherwise guesses from nvcc on PATH and the link
  fails with ``cannot find -lcudart``);
- ``TORCH_CUDA_ARCH_LIST`` defaults to DEFAULT_ARCH_LIST (unset, torch's build helper crashes without
  a GPU).
"""

import os
import shutil
import sys

EXT_NAME = "sdcpc_core.ops._window_attention_cuda"
SOURCES = ["sdcpc_core/csrc/window_attention.cpp", "sdcpc_core/csrc/window_attention_kernel.cu"]
DEFAULT_CUDA_HOME = "/usr/local/cuda"
DEFAULT_ARCH_LIST = "8.0;8.6;8.7;8.9;9.0+PTX"

_decision = None  # (ext_modules, cmdclass), computed once


def _required():
    return os.environ.get("SDCPC_REQUIRE_CUDA", "") == "1"


def _skip(reason):
    msg = f"sdcpc: not building the CUDA window-attention extension ({reason}); using the PyTorch path."
    if _required():
        raise RuntimeError(msg + " SDCPC_REQUIRE_CUDA=1 makes this an error.")
    print(msg, file=sys.stderr)
    return [], {}


def _decide():
    try:
        import torch
    except ImportError:
        return _skip("torch is not installed")
    if torch.version.cuda is None:
        return _skip(f"torch {torch.__version__} is a CPU build")
    cuda_home = os.environ.setdefault("CUDA_HOME", DEFAULT_CUDA_HOME)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if not os.path.exists(nvcc):
        return _skip(f"no nvcc at {nvcc}; set CUDA_HOME")
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = cuda_home  # the module reads CUDA_HOME once, at its import
    root = os.path.dirname(os.path.abspath(__file__))
    ext = cpp_extension.CUDAExtension(
        EXT_NAME,
        sources=[os.path.relpath(os.path.join(root, s)) for s in SOURCES],
        include_dirs=[os.path.join(root, "sdcpc_core", "csrc")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-std=c++17"]},
    )
    return [ext], {"build_ext": _build_ext_class(cpp_extension.BuildExtension)}


def _build_ext_class(base):
    class BuildExt(base.with_options(use_ninja=shutil.which("ninja") is not None)):
        """torch's BuildExtension; without SDCPC_REQUIRE_CUDA=1 a failed build is reported and skipped."""

        def run(self):
            try:
                super().run()
            except Exception as e:  # compiler/linker errors surface as several exception types
                if _required():
                    raise
                print(f"sdcpc: building {EXT_NAME} failed ({type(e).__name__}: {e}); "
                      "using the PyTorch path. Set SDCPC_REQUIRE_CUDA=1 to make this an error.",
                      file=sys.stderr)
                self.extensions = []  # nothing to copy in place or to list as an output

    return BuildExt


def _get():
    global _decision
    if _decision is None:
        _decision = _decide()
    return _decision


def ext_modules():
    """The CUDAExtension list, or [] (with one printed message) when it cannot be built here."""
    return _get()[0]


def cmdclass():
    """{"build_ext": ...} matching ext_modules(), or {}."""
    return _get()[1]
