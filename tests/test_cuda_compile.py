"""The CUDA kernels without a GPU: compile every csrc/*/*.cu with nvcc, and hold the
"shared maths" contract (docs/ops.md) that lets the CPU tests check them.

The compile check builds each .cu for sm_80 and sm_90 in one nvcc call (-c only, so
no CUDA build of torch is needed) with the flags the CPU torch wheel requires
(-std=c++20 -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE); CMakeLists.txt's cuda_compile_check
target does the same. It is skipped, with the reason, where nvcc is absent.
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CU_FILES = sorted(CSRC.glob("*/*.cu"))
ARCHS = ("80", "90")

# Per op: the per-element functions of csrc/<op>/<op>.h (or of the csrc/common headers it includes) that its
# CUDA kernels must call.
SHARED_ELEMENT_FUNCTIONS = {
    "blur_downsample": ("forward_channels", "window_value", "window_weight", "window_output", "grad_input_element",
                        "grad_kernel_element"),
    "usrnet_data_step": ("solve_element", "solve_backward_element"),
    "dpcb": ("leaky_relu_element", "leaky_relu_grad_element", "modulate_element", "grad_cond_scale_plane", "offset_of"),
    "patchgan_conv": ("norm_act_element", "grad_z_element", "grad_y_element"),
}
# Headers that need cuBLAS/cuSPARSE or make the build several times slower (docs/ops.md).
FORBIDDEN_INCLUDES = ("torch/extension.h", "ATen/cuda/CUDAContext.h", "torch/torch.h")


def _rel(path):
    return str(path.relative_to(ROOT))


def _find_nvcc():
    candidates = [shutil.which("nvcc")]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _strip_comments(source):
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    return re.sub(r"//[^\n]*", "", source)


def _with_local_includes(path):
    """The code of `path` and of every csrc file it includes with #include "..." (transitively), comments
    stripped."""
    seen, pending, code = set(), [path.resolve()], []
    while pending:
        current = pending.pop(0)
        if current in seen:
            continue
        seen.add(current)
        text = _strip_comments(current.read_text())
        code.append(text)
        for include in re.findall(r'#\s*include\s*"([^"]+)"', text):
            if (current.parent / include).is_file():
                pending.append((current.parent / include).resolve())
    return "\n".join(code)


def _called(name, code):
    return re.search(rf"\b{name}\s*<[^;{{}}]*>\s*\(", code) or re.search(rf"\b{name}\s*\(", code)


# ---- compile check ----

@pytest.mark.skipif(not CU_FILES, reason="no csrc/*/*.cu files")
@pytest.mark.timeout(900)  # ~1 CPU-minute per file; more wall time on a loaded machine
@pytest.mark.parametrize("cu", CU_FILES, ids=_rel)
def test_cu_compiles_for_sm80_and_sm90(cu, tmp_path):
    nvcc = _find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda): CUDA compile check not run")
    from torch.utils import cpp_extension

    includes = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"], str(CSRC)]
    obj = tmp_path / (cu.stem + ".o")
    cmd = [nvcc, "-c", str(cu), "-o", str(obj), "-std=c++20", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", "-O1",
           "-Xcompiler", "-fPIC", "--threads", "2"]
    for arch in ARCHS:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    cmd += [f"-I{d}" for d in includes]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    print(f"nvcc {_rel(cu)} (sm_{', sm_'.join(ARCHS)}): {seconds:.1f} s", file=sys.stderr)
    assert proc.returncode == 0, f"nvcc failed on {_rel(cu)} ({seconds:.0f} s):\n{' '.join(cmd)}\n{log[-8000:]}"
    assert obj.is_file() and obj.stat().st_size > 0, f"nvcc produced no object for {_rel(cu)}"
    # Diagnostics in our own sources (e.g. a __host__ call from the shared
    # __host__ __device__ maths) are bugs even when nvcc only warns.
    own = [line for line in log.splitlines()
           if ("csrc/" in line or str(CSRC) in line) and re.search(r"\bwarning\b", line)]
    assert not own, f"nvcc warnings in bsrops sources ({_rel(cu)}):\n" + "\n".join(own)


# ---- source contracts (no compiler needed) ----

def test_every_op_with_a_header_and_cpu_kernel_has_cuda_kernels():
    for header in sorted(CSRC.glob("*/*.h")):
        op = header.parent.name
        if header.stem == op and (header.parent / f"{op}_cpu.cpp").exists():
            assert (header.parent / f"{op}_cuda.cu").exists(), f"csrc/{op}/{op}_cuda.cu is missing"


@pytest.mark.skipif(not CU_FILES, reason="no csrc/*/*.cu files")
@pytest.mark.parametrize("cu", CU_FILES, ids=_rel)
def test_cu_uses_only_minimal_headers_and_stream_discipline(cu):
    code = _with_local_includes(cu)  # its launches may go through csrc/common/cuda_kernel.cuh
    for header in FORBIDDEN_INCLUDES:
        assert not re.search(rf'#\s*include\s*[<"]{re.escape(header)}[>"]', code), \
            f"{_rel(cu)} includes {header}: use the minimal headers listed in docs/ops.md"
    if "TORCH_LIBRARY_IMPL" in code:
        for needle in ("CUDAGuard", "getCurrentCUDAStream", "C10_CUDA_KERNEL_LAUNCH_CHECK"):
            assert needle in code, f"{_rel(cu)} registers CUDA kernels but never uses {needle}"
        launches = len(re.findall(r"<<<", code))
        checks = len(re.findall(r"C10_CUDA_KERNEL_LAUNCH_CHECK\s*\(\s*\)", code))
        assert checks >= launches, f"{_rel(cu)}: {launches} kernel launches but {checks} launch checks"
        for launch in re.findall(r"<<<([^>]*)>>>", code):
            assert len([a for a in launch.split(",") if a.strip()]) == 4, \
                f"{_rel(cu)}: launch <<<{launch}>>> must name the current stream"


@pytest.mark.parametrize("op", sorted(SHARED_ELEMENT_FUNCTIONS))
def test_cuda_and_cpu_shared_kernels_call_the_header_per_element_functions(op):
    header = _with_local_includes(CSRC / op / f"{op}.h")
    cu = _strip_comments((CSRC / op / f"{op}_cuda.cu").read_text())
    # the CPU kernels: <op>_cpu.cpp and, where the op has a cpu_shared backend, <op>_cpu_shared.cpp
    cpu = "\n".join(_strip_comments(path.read_text()) for path in sorted((CSRC / op).glob(f"{op}_cpu*.cpp")))
    assert re.search(rf'#\s*include\s*"{op}\.h"', cu), f"{op}_cuda.cu must include {op}.h"
    for name in SHARED_ELEMENT_FUNCTIONS[op]:
        assert re.search(rf"C10_HOST_DEVICE\s+inline\s+[\w:<>,\s]*\b{name}\s*\(", header), \
            f"{op}.h (or a csrc/common header it includes) must define {name} as a C10_HOST_DEVICE function"
        assert not re.search(rf"\b{name}\s*\([^;{{]*\)\s*\{{", cu), f"{op}_cuda.cu must not redefine {name}"
        assert _called(name, cu), f"{op}_cuda.cu never calls the shared {name}"
        assert _called(name, cpu), f"{op}_cpu*.cpp (cpu, cpu_shared backends) never call the shared {name}"
