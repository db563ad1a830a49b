"""One PDM-SR training step (degradation + LR discriminator + SR), bsrops vs the references.

Groups: pdm_train_step/invariant (one kernel per image, the official configs) and
pdm_train_step/variant (a kernel per LR pixel: netK with 3x3 convs and the HR image mixed
in, which the official code cannot run at scale 4). Providers: `bsrops` (native kernels)
and `reference` (every bsrops op on its PyTorch reference, as BSROPS_BACKEND=reference).

Shapes (BSR_BENCH_SIZE=paper): the `paper` preset of bsr/configs/pdm.yaml, i.e. the
official psnr/2020Track1 step (docs/methods.md): B=32, HR 128 -> LR 32, k=21, netK
nf 64 nb 8, netN 3x3 nf 64 nb 8, netD1 stride 1, EDSR 16x64. `smoke`: tiny networks.

    pytest benchmarks/bench_pdm_train_step.py --benchmark-only
"""
import pytest
import torch

import bsrops
from bsr import config
from bsr.methods import get

KINDS = {
    "invariant": [],
    "variant": ["pdm.kernel.spatial=true", "pdm.kernel.mix=true"],
}
SMOKE = ["train.batch_size=2", "data.hr_patch=32", "pdm.kernel={nf: 8, nb: 1, ksize: 7}",
         "pdm.noise={nf: 8, nb: 1}", "pdm.sr={nf: 8, nb: 1}", "pdm.d_lr={nf: 8, nb: 2}"]
PROVIDERS = ("reference", "bsrops")


def make_step(kind, size, seed=0):
    """(step function, its method): a fresh PDM method and a fixed random batch."""
    torch.manual_seed(seed)
    cfg = config.load("pdm", "paper", overrides=[*KINDS[kind], *(SMOKE if size == "smoke" else [])])
    method = get("pdm")(cfg, "cpu")
    b, p, s = cfg.train.batch_size, cfg.data.hr_patch, cfg.data.scale
    batch = {"hr": torch.rand(b, 3, p, p), "lr": torch.rand(b, 3, p // s, p // s)}
    counter = iter(range(10 ** 9))
    return (lambda: method.train_step(batch, next(counter))), method


def run_on(provider, fn):
    if provider == "reference":
        with bsrops.use_backend("reference"):
            return fn()
    return fn()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("kind", tuple(KINDS))
def test_pdm_train_step(benchmark, bench_size, kind, provider):
    benchmark.group = f"pdm_train_step/{kind}"
    step, method = make_step(kind, bench_size)
    before = bsrops.kernel_calls()
    benchmark.pedantic(lambda: run_on(provider, step), rounds=3 if bench_size == "paper" else 1,
                       warmup_rounds=1 if bench_size == "paper" else 0)
    ran = {k for k, v in bsrops.kernel_calls().items() if v != before.get(k, 0)}
    expected = "blur_downsample.reference" if provider == "reference" else "blur_downsample.cpu"
    assert expected in ran, f"{provider} did not run {expected}: {sorted(ran)}"
    benchmark.extra_info["kernel"] = "per LR pixel" if kind == "variant" else "per image"
