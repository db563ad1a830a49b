"""One DANv2 training step (bsr.methods.dan: random Gaussian kernels, blur through
bsrops.blur_downsample, MATLAB bicubic, the alternating loop on bsrops.nn.DPCB/DPCG, L1 on SR
and kernel, backward, Adam) with every bsrops op on the `reference` backend (pure PyTorch)
against the default one (bsrops' native kernels).

Shapes (BSR_BENCH_SIZE):
  paper  the setting-1 ×4 model (nf 64, 10 × 5 DPCBs, loop 4, k 21) at HR 256 (LR 64) — batch 2
         instead of 64, so that a CPU step takes seconds, not minutes (the ops' share is per image)
  demo   the demo preset's model (nf 32, 2 × 2 DPCBs, loop 2) at its crops: HR 64, batch 8
  smoke  a tiny model for CI (run once with --benchmark-disable)

    pytest benchmarks/bench_dan_train_step.py --benchmark-only
"""
import pytest

from train_step import BACKENDS, benchmark_step, make_step

SHAPES = {
    "paper": dict(preset="paper", batch=2, patch=256, overrides=[]),
    "demo": dict(preset="demo", batch=8, patch=64, overrides=[]),
    "smoke": dict(preset="demo", batch=2, patch=32,
                  overrides=["dan.nf=8", "dan.nb=1", "dan.ng=1", "dan.loop=2", "dan.pca_kernels=2000"]),
}


def make_case(size, backend):
    """A zero-argument callable running one training step on `backend`."""
    return make_step("dan", SHAPES[size], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dan_train_step(benchmark, bench_size, backend):
    benchmark.group = f"dan_train_step/{bench_size}"
    benchmark_step(benchmark, "dan", SHAPES[bench_size], backend, "dpcb")
