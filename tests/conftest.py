"""Test session setup.

TRITON_INTERPRET=1 must be set before any module decorates a kernel with @triton.jit
(triton reads it at decoration time), so it is set here, before bsrops is imported:
the Triton kernels then run on CPU tensors through the same bsrops ops. torch.compile
gets a fresh cache directory per session (see below).
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TRITON_INTERPRET", "1")
# torch.compile's caches key a graph by the names of its ops, not by how a custom op is
# implemented: a cache written with an older bsrops could replay a backward that calls ops
# which no longer exist. Each test session compiles into a fresh cache.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bsr-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
