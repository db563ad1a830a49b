"""One USR_DA training step (bsr.methods.usrda: the discriminator update and the two generator
updates, seven network passes each, three VGG discriminators on bsrops.nn.PatchGANConv) with every
bsrops op on the `reference` backend (pure PyTorch) against the default one (bsrops' native kernels).

Shapes (BSR_BENCH_SIZE); the perceptual terms are off (no VGG19 ImageNet weights here):
  paper  the repo's networks (64 ch, Dec_Id 10 / Dec_SR 23 RRDBs, D width 64) at LR 32 / HR 128,
         batch 2 instead of 4 at LR 64 (batch norm needs 2 values on the last 1x1 map), so that a CPU step
         takes seconds
  smoke  a tiny model for CI (run once with --benchmark-disable)

    pytest benchmarks/bench_usrda_train_step.py --benchmark-only
"""
import pytest

from train_step import BACKENDS, benchmark_step

SHAPES = {
    "paper": dict(preset="paper", batch=2, patch=128, overrides=["usrda.loss.percept=0"]),
    "smoke": dict(preset="smoke", batch=2, patch=128, overrides=[]),
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_usrda_train_step(benchmark, bench_size, backend):
    benchmark.group = f"usrda_train_step/{bench_size}"
    benchmark_step(benchmark, "usrda", SHAPES[bench_size], backend, "patchgan")
