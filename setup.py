"""Build of bsrops._C: C++ CPU kernels always, CUDA kernels when torch has CUDA and nvcc is found.

Switches (environment, read when the package is built):
  BSROPS_NO_EXT=1            install the pure-Python package only (reference kernels)
  BSROPS_REQUIRE_EXT=1       a native build that fails or cannot run fails the install
  BSROPS_WITH_CUDA=auto|0|1  (FORCE_CUDA=1 is an alias of 1; 1 also fails the install on an error)
  TORCH_CUDA_ARCH_LIST, MAX_JOBS
  BSROPS_EXTRA_CFLAGS        more C++ compiler flags, after the project's ("-O1 -g0": a quick build)
Otherwise a missing torch or compiler or a failed compile never fails the install: the build
prints what failed (the compiler's error lines, naming the file, or the exception) and bsrops
falls back to its PyTorch reference kernels at import. (BSROPS_DISABLE_EXT=1 is the import-time
switch: it skips loading a built _C.)
"""
import contextlib
import glob
import os
import re
import shlex
import shutil
import sys
import sysconfig
import threading

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
FALLBACK = "bsrops will use its PyTorch reference kernels (BSROPS_REQUIRE_EXT=1 makes this an error)"


def log(message):
    print(f"[bsrops build] {message}", file=sys.stderr, flush=True)


def env_flag(name):
    return os.environ.get(name) == "1"


def cuda_switch():
    return "1" if env_flag("FORCE_CUDA") else os.environ.get("BSROPS_WITH_CUDA", "auto")


def cuda_wanted(torch_cuda, cuda_home):
    switch = cuda_switch()
    if switch == "0":
        return False, "disabled by BSROPS_WITH_CUDA=0"
    if torch_cuda is None or cuda_home is None:
        reason = "torch has no CUDA" if torch_cuda is None else "nvcc / CUDA_HOME not found"
        if switch == "1":
            raise RuntimeError(f"BSROPS_WITH_CUDA=1 but {reason}")
        return False, reason
    return True, f"torch CUDA {torch_cuda}, CUDA_HOME={cuda_home}"


# ---- what a failed build says ----------------------------------------------------------------

_ERROR_LINE = re.compile(r"(?:^|[\s:])(?:fatal error|error)(?::|\s+[A-Z]\d+:)", re.IGNORECASE)
_SOURCE_AT = re.compile(r"^([^\s:]+\.(?:c|cc|cpp|cxx|cu|cuh|h|hpp))[:(]\d+")
_NINJA_FAILED = re.compile(r"^FAILED: (?:\[code=\d+\] )?(\S+)")


def describe_failure(output, error=None, root=ROOT, max_lines=8):
    """What a failed native build did wrong, in one paragraph: the sources the compiler
    complained about, its first error lines, the object that failed, and the exception.

    `output` is the build's text (compiler and ninja messages); paths under `root` are
    shown relative to it."""
    prefix = root.rstrip(os.sep) + os.sep

    def rel(text):
        return text.replace(prefix, "")

    lines = [rel(line.strip()) for line in output.splitlines()]
    errors, files, objects = [], [], []
    for line in lines:
        failed = _NINJA_FAILED.match(line)
        if failed:
            objects.append(failed.group(1))
            continue
        if line.startswith("[") or not _ERROR_LINE.search(line):  # ninja's command lines hold flags like -Werror=
            continue
        if line not in errors:
            errors.append(line[:400])
        source = _SOURCE_AT.match(line)
        if source and source.group(1) not in files:
            files.append(source.group(1))
    parts = []
    if files:
        parts.append("in " + ", ".join(files))
    if errors:
        more = f" (+{len(errors) - max_lines} more)" if len(errors) > max_lines else ""
        parts.append("compiler: " + " | ".join(errors[:max_lines]) + more)
    if objects:
        parts.append("failed target(s): " + ", ".join(dict.fromkeys(objects)))
    if error is not None:
        first = (rel(str(error)).strip().splitlines() or [""])[0]
        parts.append(f"{type(error).__name__}: {first[:400]}")
    return "; ".join(parts) if parts else "no error message was captured (see the build output above)"


@contextlib.contextmanager
def tee_output(captured):
    """Shows what the build writes to file descriptors 1 and 2 (the compiler and ninja write
    there directly, not through sys.stdout) and appends its text to the list `captured`."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    saved = os.dup(1), os.dup(2)
    chunks = []

    def pump():
        with os.fdopen(read_end, "rb") as source, os.fdopen(os.dup(saved[0]), "wb") as shown:
            for chunk in iter(lambda: source.read1(1 << 16), b""):
                chunks.append(chunk)
                shown.write(chunk)
                shown.flush()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        thread.join(timeout=30)
        captured.append(b"".join(chunks).decode(errors="replace"))


def fail_or_fall_back(what, required, error=None):
    if required:
        log(f"native build FAILED: {what}")
        raise RuntimeError(f"bsrops._C was not built ({what})") from error
    log(f"native build FAILED: {what}. {FALLBACK}.")


def find_ninja():
    """ninja's path. pip's `ninja` package puts it next to the interpreter, which is not on
    PATH when a virtualenv's python runs without the virtualenv being activated."""
    scripts = sysconfig.get_path("scripts")
    if shutil.which("ninja") is None and shutil.which("ninja", path=scripts):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    return shutil.which("ninja")


# ---- the extension ---------------------------------------------------------------------------

def extension_and_cmdclass():
    required = env_flag("BSROPS_REQUIRE_EXT")
    if env_flag("BSROPS_NO_EXT"):
        if required:
            raise RuntimeError("BSROPS_NO_EXT=1 (build no native extension) contradicts BSROPS_REQUIRE_EXT=1")
        log("BSROPS_NO_EXT=1: building no native extension (reference kernels only)")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as error:
        hint = ("torch is not importable in the build environment "
                f"({error}); install torch first, then `pip install . --no-build-isolation`")
        if not required:
            log(f"no native extension: {hint}. {FALLBACK}.")
            return [], {}

        class NoTorch(build_ext):
            def run(self):
                fail_or_fall_back(hint, True)

        return [Extension("bsrops._C", ["csrc/bsrops.cpp"])], {"build_ext": NoTorch}

    with_cuda, why = cuda_wanted(torch.version.cuda, cpp_extension.CUDA_HOME)
    ninja = find_ninja() or "not found (one file at a time)"  # before BuildExtension looks for it
    required = required or (with_cuda and cuda_switch() == "1")
    sources = ["csrc/bsrops.cpp"] + sorted(glob.glob("csrc/*/*.cpp"))
    macros = [("BSROPS_TORCH_VERSION", f'"{torch.__version__}"'), ("BSROPS_WITH_CUDA", str(int(with_cuda)))]
    extra_cflags = shlex.split(os.environ.get("BSROPS_EXTRA_CFLAGS", ""))
    extra = {"cxx": ["-O3", "-std=c++20", "-fopenmp", *extra_cflags]}
    builder = cpp_extension.CppExtension
    if with_cuda:
        sources += sorted(glob.glob("csrc/*/*_cuda.cu"))
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        macros.append(("BSROPS_CUDA_ARCHS", f'"{archs}"'))
        extra["nvcc"] = ["-O3", "-std=c++20"]
        builder = cpp_extension.CUDAExtension
    ext = builder("bsrops._C", sources, define_macros=macros, extra_compile_args=extra,
                  extra_link_args=["-fopenmp"])

    class TolerantBuild(cpp_extension.BuildExtension):
        """Says what failed in the native build (the compiler's errors and their files, or the
        exception) and installs the reference-only package, or fails when the build is required."""

        def run(self):
            compiler = cpp_extension.get_cxx_compiler()
            log(f"torch {torch.__version__}; C++ compiler: {compiler}; CUDA kernels: {with_cuda} ({why}); "
                f"OpenMP: on; ninja: {ninja}; MAX_JOBS={os.environ.get('MAX_JOBS', 'default')}; sources: {len(sources)}"
                + (f"; BSROPS_EXTRA_CFLAGS: {' '.join(extra_cflags)}" if extra_cflags else ""))
            if shutil.which(shlex.split(compiler)[0]) is None:
                fail_or_fall_back(f"no C++ compiler: `{compiler}` (CXX, default c++) is not on PATH; "
                                  "install one (g++ or clang++) and reinstall", required)
                return
            captured = []
            try:
                with tee_output(captured):
                    super().run()
            except Exception as error:  # the compiler, the linker, ninja or the toolchain check
                fail_or_fall_back(describe_failure("".join(captured), error), required, error)

    return [ext], {"build_ext": TolerantBuild.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_and_cmdclass()
setup(packages=find_packages(include=["bsrops", "bsrops.*", "bsr", "bsr.*"]), ext_modules=ext_modules,
      cmdclass=cmdclass)
