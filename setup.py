"""Builds tilesparse._C.

CUDA kernels are compiled whenever torch is a CUDA build (torch.version.cuda)
and a CUDA toolkit is found (CUDA_HOME), never decided by whether a GPU is
visible, so compile errors surface on GPU-less machines too.

Environment knobs:
  TILESPARSE_CPU_ONLY=1   build without CUDA kernels even when a toolkit exists
  TORCH_CUDA_ARCH_LIST    CUDA archs (default "8.0;9.0a": Ampere, and Hopper with its arch-specific
                          wgmma/setmaxnreg/TMA-multicast features). torch's cpp_extension turns each
                          entry into one -gencode: "9.0a" -> -gencode=arch=compute_90a,code=sm_90a, so
                          the Hopper target is compiled once (sm_90a SASS also runs every sm_90 kernel;
                          listing "9.0" too would compile all sources a third time for nothing). A list
                          with 9.0a defines TILESPARSE_HAS_SM90A=1: without it the sm_90a kernel bodies
                          are traps and the launch plan must not pick them.
  MAX_JOBS                parallel compile jobs (read by torch's BuildExtension)
  NVCC_THREADS            nvcc --threads per job (default 2: the sm_80 and sm_90a passes of one
                          translation unit compile in parallel)
  DEBUG=1                 -O0 -g, device debug info
"""
import glob
import os
import re
import subprocess
import sys
import sysconfig

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg):
    print(f"[tilesparse setup] {msg}", file=sys.stderr, flush=True)


def _nvcc_major(cuda_home):
    out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                         check=True).stdout
    return int(re.search(r"release (\d+)\.(\d+)", out).group(1))


def _use_cuda():
    if os.getenv("TILESPARSE_CPU_ONLY", "0") == "1":
        _log("TILESPARSE_CPU_ONLY=1: building the CPU-only extension as asked (no CUDA kernels).")
        return False
    if torch.version.cuda is None:
        _log("WARNING: torch is a CPU-only build: building the CPU-only extension (no CUDA kernels).")
        return False
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        _log(f"WARNING: torch is built for CUDA {torch.version.cuda} but no CUDA toolkit (nvcc) was found: "
             "building the CPU-only extension. Install the toolkit (or `pip install nvidia-cuda-nvcc`) and set "
             "CUDA_HOME to compile the CUDA kernels.")
        return False
    nvcc_major, torch_major = _nvcc_major(CUDA_HOME), int(torch.version.cuda.split(".")[0])
    if nvcc_major != torch_major:
        raise RuntimeError(
            f"nvcc at {CUDA_HOME} is CUDA {nvcc_major} but torch is built for CUDA {torch.version.cuda}: "
            "the major versions must agree. Point CUDA_HOME at a matching toolkit, or set "
            "TILESPARSE_CPU_ONLY=1 for a CPU-only build.")
    _log(f"building CUDA kernels with nvcc from {CUDA_HOME} (CUDA {nvcc_major}, torch CUDA {torch.version.cuda}), "
         f"archs {os.environ.get('TORCH_CUDA_ARCH_LIST')}")
    return True


def get_extensions():
    debug = os.getenv("DEBUG", "0") == "1"
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    use_cuda = _use_cuda()
    archs = [a.strip() for a in os.environ["TORCH_CUDA_ARCH_LIST"].replace(" ", ";").split(";") if a.strip()]
    has_sm90a = any(a.split("+")[0] == "9.0a" for a in archs)
    if use_cuda and any(a.split("+")[0] == "9.0" for a in archs):
        _log("NOTE: TORCH_CUDA_ARCH_LIST names 9.0" + (" and 9.0a: every source compiles twice for Hopper "
             "(9.0a alone covers it)" if has_sm90a else " without 9.0a: the sm_90a forward (wgmma) is "
             "not built; Hopper runs the v2 kernels"))
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # no -std: torch.utils.cpp_extension picks the standard this torch needs (C++17, or C++20 from 2.10)
    cxx = opt + ["-fdiagnostics-color=always"]
    link = []
    # at::parallel_for is a header template: with torch's OpenMP backend it only
    # runs threads in code compiled with -fopenmp (otherwise it silently runs
    # serially). Linking -fopenmp names libgomp.so.1, which resolves to the one
    # torch has already loaded.
    if torch._C.has_openmp:
        cxx += ["-fopenmp"]
        link += ["-fopenmp"]
    else:
        _log("WARNING: torch is built without OpenMP: at::parallel_for uses its native thread pool")
    nvcc = opt + ["--expt-relaxed-constexpr", "-lineinfo",
                  f"--threads={os.getenv('NVCC_THREADS', '2')}"]
    if debug:
        nvcc += ["-G"]
    sources = sorted(glob.glob("csrc/core/*.cpp") + glob.glob("csrc/ops/*.cpp"))
    if use_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
    ext = CUDAExtension if use_cuda else CppExtension
    kwargs = dict(extra_compile_args={"cxx": cxx, "nvcc": nvcc} if use_cuda else {"cxx": cxx},
                  extra_link_args=link)
    if use_cuda:
        kwargs["define_macros"] = [("TILESPARSE_WITH_CUDA", "1")] + ([("TILESPARSE_HAS_SM90A", "1")] if has_sm90a else [])
    return [ext("tilesparse._C", sources, include_dirs=[os.path.join(ROOT, "csrc")], **kwargs)]


class BuildExt(BuildExtension.with_options(use_ninja=True)):
    """torch's BuildExtension (ninja) with a persistent object directory.

    pip's editable install (PEP 660, setuptools' ``editable_wheel``) sets
    ``build_temp`` to a fresh ``TemporaryDirectory(suffix=".build-temp")`` and
    deletes it afterwards, so ninja never saw its previous objects and every
    ``pip install -e .`` recompiled every source. Pinning ``build_temp`` to the
    directory ``setup.py build_ext --inplace`` uses (``build/temp.<plat>-<tag>``)
    keeps ``build.ninja``, ``.ninja_log``, the objects and their ``-MMD``
    header dependencies between builds: ninja recompiles only sources whose
    inputs (or compile command) changed.
    """

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(ROOT, "build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")


setup(
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExt},
)
