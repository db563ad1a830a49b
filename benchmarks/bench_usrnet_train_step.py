"""One USRNet training step (bsr.methods.usrnet: KAIR data synthesis with blur_downsample,
the unrolled network on USRNetDataTerm, L1, backward, Adam) with every bsrops op on the
`reference` backend (pure PyTorch) against the default one (bsrops' native kernels).

Shapes (BSR_BENCH_SIZE):
  paper  the paper model (K=8, h_nc=64, nc 64..512) at HR 96, s=4 — batch 2 instead of 48,
         so that a CPU step takes seconds, not minutes (the ops' share is per image anyway)
  demo   the demo preset's model (K=6, nc 16..64, nb 2) at its crops: HR 48, s=4, batch 8
  smoke  a tiny model for CI (run once with --benchmark-disable)

    pytest benchmarks/bench_usrnet_train_step.py --benchmark-only
"""
import pytest

from train_step import BACKENDS, benchmark_step, make_step

SHAPES = {
    "paper": dict(preset="paper", batch=2, patch=96, overrides=["usrnet.scales=[4]"]),
    "demo": dict(preset="demo", batch=8, patch=48, overrides=[]),
    "smoke": dict(preset="smoke", batch=2, patch=32, overrides=["usrnet.scales=[4]"]),
}


def make_case(size, backend):
    """A zero-argument callable running one training step on `backend`."""
    return make_step("usrnet", SHAPES[size], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_usrnet_train_step(benchmark, bench_size, backend):
    benchmark.group = f"usrnet_train_step/{bench_size}"
    benchmark_step(benchmark, "usrnet", SHAPES[bench_size], backend, "usrnet")
