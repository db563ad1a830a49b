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
import os

import pytest
import torch

import bsrops
from bsr import config, methods

SHAPES = {
    "paper": dict(preset="paper", batch=2, patch=96, overrides=["usrnet.scales=[4]"]),
    "demo": dict(preset="demo", batch=8, patch=48, overrides=[]),
    "smoke": dict(preset="smoke", batch=2, patch=32, overrides=["usrnet.scales=[4]"]),
}
BACKENDS = ("reference", "default")


def make_case(size, backend):
    """A zero-argument callable running one training step on `backend`."""
    d = SHAPES[size]
    cfg = config.load("usrnet", d["preset"], overrides=d["overrides"] + [f"data.hr_patch={d['patch']}"])
    torch.manual_seed(0)
    method = methods.get("usrnet")(cfg, "cpu")
    batch = {"hr": torch.rand(d["batch"], 3, d["patch"], d["patch"]), "seed": torch.arange(d["batch"])}

    def step():
        if backend == "reference":
            with bsrops.use_backend("reference"):
                return method.train_step(batch, 0)
        return method.train_step(batch, 0)
    return step


@pytest.mark.parametrize("backend", BACKENDS)
def test_usrnet_train_step(benchmark, bench_size, backend):
    benchmark.group = f"usrnet_train_step/{bench_size}"
    step = make_case(bench_size, backend)
    before = bsrops.kernel_calls()
    benchmark(step)
    after = bsrops.kernel_calls()
    ran = {k.split(".", 1)[1] for k in after if after[k] != before.get(k, 0) and k.startswith("usrnet")}
    expected = "reference" if backend == "reference" else bsrops.backend_info("cpu")["backend"]
    assert ran and all(b.startswith(expected) for b in ran), (ran, expected)
    benchmark.extra_info.update(SHAPES[bench_size], backends_ran=sorted(ran), threads=torch.get_num_threads(),
                                load_average=os.getloadavg()[0])
