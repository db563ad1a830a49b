"""Build of bsrops._C: C++ CPU kernels always, CUDA kernels when torch has CUDA and nvcc is found.

Switches (environment): BSROPS_WITH_CUDA=auto|0|1 (FORCE_CUDA=1 is an alias of 1),
TORCH_CUDA_ARCH_LIST, MAX_JOBS, BSROPS_NO_EXT=1 (install the pure-Python package only).
A missing torch, compiler or CUDA never fails the install unless CUDA was forced: the
build configuration is printed and bsrops falls back to its PyTorch reference kernels.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def log(message):
    print(f"[bsrops build] {message}", file=sys.stderr)


def cuda_wanted(torch_cuda, cuda_home):
    switch = "1" if os.environ.get("FORCE_CUDA") == "1" else os.environ.get("BSROPS_WITH_CUDA", "auto")
    if switch == "0":
        return False, "disabled by BSROPS_WITH_CUDA=0"
    if torch_cuda is None or cuda_home is None:
        reason = "torch has no CUDA" if torch_cuda is None else "nvcc / CUDA_HOME not found"
        if switch == "1":
            raise RuntimeError(f"BSROPS_WITH_CUDA=1 but {reason}")
        return False, reason
    return True, f"torch CUDA {torch_cuda}, CUDA_HOME={cuda_home}"


def extension_and_cmdclass():
    if os.environ.get("BSROPS_NO_EXT") == "1":
        log("BSROPS_NO_EXT=1: building no native extension (reference kernels only)")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        log("torch is not importable in the build environment: no native extension. "
            "Install torch first, then `pip install -e . --no-build-isolation`.")
        return [], {}

    with_cuda, why = cuda_wanted(torch.version.cuda, cpp_extension.CUDA_HOME)
    sources = ["csrc/bsrops.cpp"] + sorted(glob.glob("csrc/*/*_cpu.cpp"))
    macros = [("BSROPS_TORCH_VERSION", f'"{torch.__version__}"'), ("BSROPS_WITH_CUDA", str(int(with_cuda)))]
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    extra = {"cxx": cxx_flags}
    builder = cpp_extension.CppExtension
    if with_cuda:
        sources += sorted(glob.glob("csrc/*/*_cuda.cu"))
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        macros.append(("BSROPS_CUDA_ARCHS", f'"{archs}"'))
        extra["nvcc"] = ["-O3", "-std=c++20"]
        builder = cpp_extension.CUDAExtension
    log(f"torch {torch.__version__}; CUDA kernels: {with_cuda} ({why}); OpenMP: on; "
        f"MAX_JOBS={os.environ.get('MAX_JOBS', 'default')}; sources: {len(sources)}")
    ext = builder("bsrops._C", sources, define_macros=macros, extra_compile_args=extra,
                  extra_link_args=["-fopenmp"])

    class TolerantBuild(cpp_extension.BuildExtension):
        """Prints why the native build failed and installs the reference-only package."""

        def run(self):
            try:
                super().run()
            except Exception as error:  # any compiler/toolchain failure
                if with_cuda and os.environ.get("BSROPS_WITH_CUDA") == "1":
                    raise
                log(f"native build FAILED ({error}); bsrops will use its PyTorch reference kernels. "
                    "Install a C++ compiler and rebuild with `pip install -e . --no-build-isolation`.")

    return [ext], {"build_ext": TolerantBuild.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_and_cmdclass()
setup(packages=find_packages(include=["bsrops*", "bsr*"]), ext_modules=ext_modules, cmdclass=cmdclass)
