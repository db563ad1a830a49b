"""One RealSR training step (bsr.methods.realsr: a pool kernel through bsrops.blur_downsample with
symmetric padding, 8-bit LR, noise injection, RRDB, RaGAN against the NLayer PatchGAN on
bsrops.nn.PatchGANConv, backward, both Adam steps) with every bsrops op on the `reference` backend
(pure PyTorch) against the default one (bsrops' native kernels).

Shapes (BSR_BENCH_SIZE); the perceptual term is off everywhere (VGG19's ImageNet weights cannot be
downloaded here) and KernelGAN runs 2 iterations (the pool is built once, before the timing):
  paper  the official model (RRDB nf 64, 23 blocks; D ndf 64) at HR 128 + 2 x 16 margin, batch 2
         instead of 16, so that a CPU step takes seconds
  smoke  a tiny model for CI (run once with --benchmark-disable)

    pytest benchmarks/bench_realsr_train_step.py --benchmark-only
"""
import pytest

from train_step import BACKENDS, benchmark_step

COMMON = ["realsr.loss.perceptual=0", "realsr.kernelgan.iterations=2"]
SHAPES = {
    # the embedded photos have no flat 256x256 window: 32x32 ones (the LR crop) with a looser threshold
    "paper": dict(preset="paper", batch=2, patch=160,
                  overrides=COMMON + ["realsr.noise.patch=32", "realsr.noise.max_var=120", "realsr.noise.min_mean=0"]),
    "smoke": dict(preset="smoke", batch=2, patch=64, overrides=COMMON),
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_realsr_train_step(benchmark, bench_size, backend):
    benchmark.group = f"realsr_train_step/{bench_size}"
    benchmark_step(benchmark, "realsr", SHAPES[bench_size], backend, "blur_downsample")
