"""Triton kernels of the bsrops ops (one module per op).

Nothing here is imported by `import bsrops`: the op modules import `bsrops.triton.<op>`
on the first call that the `triton` backend serves, so bsrops works without triton.
On CPU-only machines the kernels run on CPU tensors under TRITON_INTERPRET=1 (set
before this package is first imported; triton reads it when a kernel is decorated).
"""
