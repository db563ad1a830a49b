"""Test session setup.

TRITON_INTERPRET=1 must be set before any module decorates a kernel with @triton.jit
(triton reads it at decoration time), so it is set here, before bsrops is imported:
the Triton kernels then run on CPU tensors through the same bsrops ops.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
