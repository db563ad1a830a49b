"""Drop-in replacements, on bsrops' ops, for code of the SR codebases users already have.

Each object takes its original's arguments and returns its original's result, so adopting it is one line:

- `kair.DataNet`: the data module of KAIR's USRNet (cszn/KAIR), `model.d = DataNet()`;
- `dan.BatchBlur`, `dan.DPCG`: the batch blur of DAN and IKC and DANv2's dual-path group (greatlog/DAN);
- `basicsr.filter2D`: BasicSR's filter2D, Real-ESRGAN's degradation blur (XPixelGroup/BasicSR);
- `unpairedsr.blur`: the blur and decimation of PDM-SR's KernelModel (greatlog/UnpairedSR).

What each keeps of its original is stated in its docstring and in docs/ops.md (Compat).
"""
from . import basicsr, dan, kair, unpairedsr

__all__ = ["basicsr", "dan", "kair", "unpairedsr"]
