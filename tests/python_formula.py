"""Run ops on CPU tensors through their Python formulas while _C's C++ ones are registered: the Autograd kernels
and composites that run without _C and under the Python backends (bsrops._backend.register_python_formula)."""
import contextlib
import warnings

import torch

import bsrops


@contextlib.contextmanager
def python_formula(formulas):
    """Inside the block, torch.ops.bsrops.<op> runs composite and autograd_kernel for each (op, composite,
    autograd_kernel) in formulas, over the native kernels, on CPU tensors."""
    library = torch.library.Library("bsrops", "IMPL")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel")
        for op, composite, autograd_kernel in formulas:
            library.impl(op, composite, "CPU", allow_override=True)
            library.impl(op, autograd_kernel, "AutogradCPU", with_keyset=True, allow_override=True)
    try:
        yield
    finally:
        library._destroy()


def native_and_python(run, formulas):
    """(run() with the native formulas, run() with the Python ones), each after the same seed."""
    torch.manual_seed(1)
    native = run()
    with python_formula(formulas):
        torch.manual_seed(1)
        python = run()
    return native, python


def assert_equal_tensors(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert (a is None and e is None) or torch.equal(a, e)


needs_native = bsrops._extension.native is None

FALLBACKS = {"without_C": {"BSROPS_DISABLE_EXT": "1"}, "C_for_another_torch": {}}


def run_fallback(code, fallback):
    """stdout of `code` run in a fresh interpreter without _C ("without_C") or with a _C built for another torch
    ("C_for_another_torch": its C++ Autograd kernels registered but unused, the reference backend installing
    the Python formulas over them)."""
    import os
    import subprocess
    import sys

    prelude = "import torch; torch.__version__ = '0.0.1'\n" if fallback == "C_for_another_torch" else ""
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", prelude + code], capture_output=True, text=True,
                            env={**os.environ, "BSROPS_REQUIRE_EXT": "0", **FALLBACKS[fallback]}, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout
