"""Loads the native extension bsrops._C and records why it is or is not used.

If `_C` is missing, fails to load, or was built for another torch, every op still
works through its PyTorch reference, after one warning naming the cause and the fix.
BSROPS_REQUIRE_EXT=1 turns that situation into an ImportError (CI sets it), and
BSROPS_DISABLE_EXT=1 skips loading `_C` on purpose.
"""
import os
import warnings

import torch

REBUILD_HINT = "rebuild it against the running torch with `pip install -e . --no-build-isolation`"


def _load():
    if os.environ.get("BSROPS_DISABLE_EXT") == "1":
        return None, "disabled by BSROPS_DISABLE_EXT=1"
    try:
        from . import _C
    except ImportError as error:
        return None, f"bsrops._C could not be imported ({error}); {REBUILD_HINT}"
    if _C.TORCH_VERSION != torch.__version__:
        return None, f"bsrops._C was built for torch {_C.TORCH_VERSION} but torch {torch.__version__} runs; {REBUILD_HINT}"
    return _C, None


native, load_error = _load()

if load_error is not None:
    if os.environ.get("BSROPS_REQUIRE_EXT") == "1":
        raise ImportError(f"BSROPS_REQUIRE_EXT=1 and the native extension is unusable: {load_error}")
    if os.environ.get("BSROPS_DISABLE_EXT") != "1":
        warnings.warn(f"bsrops runs on its PyTorch reference kernels: {load_error}", RuntimeWarning, stacklevel=2)


def build_info():
    """What the native extension was built with (empty when it is not loaded)."""
    if native is None:
        return {"loaded": False, "error": load_error}
    return {
        "loaded": True,
        "torch": native.TORCH_VERSION,
        "cuda": bool(native.WITH_CUDA),
        "cuda_archs": native.CUDA_ARCHS,
        "openmp": bool(native.WITH_OPENMP),
    }
