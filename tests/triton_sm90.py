"""Triton test helpers shared by the op test files: skips when triton is missing or the
interpreter is off, and the sm_90 compile check.

An interpreted @triton.jit function cannot be compiled, so the kernels are compiled in a
subprocess with TRITON_INTERPRET=0, for GPUTarget("cuda", 90, 32); no GPU is needed.
A config is (pointer element type, constexprs, {pointer argument: element type} overrides);
the other arguments are i32.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

try:
    import triton  # noqa: F401

    TRITON_ERROR = None
except ImportError as error:  # CPU-only torch wheels ship without triton
    TRITON_ERROR = f"triton is not importable ({error})"


def require_triton():
    if TRITON_ERROR:
        pytest.skip(TRITON_ERROR)


def require_interpreter():
    """The Triton backend serves CPU tensors only under TRITON_INTERPRET=1 (tests/conftest.py sets it)."""
    require_triton()
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton backend serves CPU tensors only with TRITON_INTERPRET=1 (set by tests/conftest.py)")

COMPILE_SCRIPT = textwrap.dedent("""
    import importlib, json, sys
    import triton
    from triton.backends.compiler import GPUTarget

    module_name, name, configs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    fn = getattr(importlib.import_module(module_name), name)
    assert isinstance(fn, triton.runtime.jit.JITFunction), type(fn)
    results = []
    for dtype, constexprs, overrides in configs:
        signature = {arg: "constexpr" if arg in constexprs else
                     "*" + overrides.get(arg, dtype) if arg.endswith("_ptr") else "i32" for arg in fn.arg_names}
        compiled = triton.compile(triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", 90, 32))
        results.append({"ptx_target": ".target sm_90" in compiled.asm["ptx"],
                        "ptx_entry": (".entry " + name) in compiled.asm["ptx"],
                        "cubin_bytes": len(compiled.asm.get("cubin", b""))})
    print("RESULT " + json.dumps(results))
""")


def jitted_kernels(module):
    """Names of the @triton.jit kernels (`*_kernel`) of a module."""
    return {name for name, value in vars(module).items()
            if name.endswith("_kernel") and type(value).__name__ in ("JITFunction", "InterpretedFunction")}


def assert_compiles_for_sm90(module_name, name, configs, tmp_path, timeout=55):
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, module_name, name, json.dumps(configs)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(line[-1][len("RESULT "):])
    assert len(results) == len(configs)
    for config, result in zip(configs, results):
        assert result["ptx_target"] and result["ptx_entry"], (config, result)
        assert result["cubin_bytes"] > 0, (config, result)
