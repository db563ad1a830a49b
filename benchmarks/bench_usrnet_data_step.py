"""Benchmarks of USRNet's data step (CPU): the 8-iteration chain and a large image.

Groups (BSR_BENCH_SIZE=paper, the default):
  usrnet_data_step/chain  USRNet's training shape: N=48, C=3, HR 96x96, s=4, 25x25 kernels,
                          float32; the invariants once, then K=8 data steps x_{i+1} = D(x_i, alpha_i)
                          (the prior between them is left out); forward+backward: grads w.r.t.
                          z and the alphas (what USRNet's training needs)
  usrnet_data_step/large  1x3x1024x1024, s=4, 25x25 kernel: the same chain forward (inference),
                          with peak extra memory
Providers: official (USRNet's formulation: DataNet recomputes the block mean of |FB|^2 every
iteration), hoisted (the PyTorch formulation with the invariants hoisted), bsrops
(USRNetDataTerm: one precompute, K fused solves on the native cpu backend).

extra_info: peak_extra_bytes (benchmarks/memory.py: a fresh subprocess, peak RSS during one
call minus the RSS before it).

    pytest benchmarks/bench_usrnet_data_step.py --benchmark-only
    BSR_BENCH_SIZE=smoke pytest benchmarks --benchmark-disable        # CI smoke run

The case builders (make_case) are also what benchmarks/check_targets.py and memory.py run.
"""
import pytest
import torch

import bsrops
from bench_blur_downsample import _benchmark, _memory_info
from bsrops.reference import usrnet_data_step as ref

SHAPES = {
    "paper": {
        "chain": dict(n=48, c=3, h=24, w=24, s=4, k=25, iterations=8),
        "large": dict(n=1, c=3, h=256, w=256, s=4, k=25, iterations=8),
    },
    "smoke": {
        "chain": dict(n=2, c=3, h=4, w=4, s=4, k=5, iterations=2),
        "large": dict(n=1, c=1, h=8, w=8, s=4, k=5, iterations=2),
    },
}
KINDS = tuple(SHAPES["paper"])
PROVIDERS = ("official", "hoisted", "bsrops")
MODES = ("forward", "forward+backward")
ELEMENT = torch.float32


def shape(kind, size):
    return SHAPES[size][kind]


def make_inputs(kind, size, seed=0):
    """z (N, C, sH, sW), y (N, C, h, w), normalised kernels (N, k, k), alphas (N, K), grad_out."""
    d = shape(kind, size)
    gen = torch.Generator().manual_seed(seed)
    hr = (d["n"], d["c"], d["s"] * d["h"], d["s"] * d["w"])
    z = torch.randn(hr, generator=gen, dtype=ELEMENT)
    y = torch.randn(d["n"], d["c"], d["h"], d["w"], generator=gen, dtype=ELEMENT)
    kernel = torch.rand(d["n"], d["k"], d["k"], generator=gen, dtype=ELEMENT)
    kernel /= kernel.sum(dim=(1, 2), keepdim=True)
    alphas = torch.rand(d["n"], d["iterations"], generator=gen, dtype=ELEMENT) * 0.1 + 0.01
    return z, y, kernel, alphas, torch.randn(hr, generator=gen, dtype=ELEMENT)


def traffic_bytes(kind, mode, size, dtype=ELEMENT):
    """Bytes the chain moves in the FFT formulation, the precompute left out: per data step z read and its
    half spectrum written (rfft2), that spectrum, FB and FBFy read and the solution's spectrum written (the
    solve), that spectrum read and x written (irfft2); spectra complex64 (half precision is solved in
    float32). The backward of a step is one more solve of that traffic."""
    d = shape(kind, size)
    height, width = d["s"] * d["h"], d["s"] * d["w"]
    half_spectrum = d["n"] * height * (width // 2 + 1) * 8  # one channel
    image = d["n"] * d["c"] * height * width * torch.finfo(dtype).bits // 8
    step = 2 * image + 5 * d["c"] * half_spectrum + half_spectrum  # z, x; 4 passes of z's spectrum + FBFy; FB
    return d["iterations"] * step * (1 if mode == "forward" else 2)


def official_chain(z, y, kernel, alphas, scale):
    fb, fbc, f2b, fbfy = ref.official_precompute(y, kernel, scale)
    for i in range(alphas.shape[1]):
        z = ref.data_net(z, fb, fbc, f2b, fbfy, alphas[:, i].view(-1, 1, 1, 1), scale)
    return z


def hoisted_chain(z, y, kernel, alphas, scale):
    fb, fbc, fbfy, f2b_mean = ref.hoisted_precompute(y, kernel, scale)
    for i in range(alphas.shape[1]):
        z = ref.hoisted_solve(z, fb, fbc, fbfy, f2b_mean, alphas[:, i].view(-1, 1, 1, 1), scale)
    return z


def bsrops_chain(z, y, kernel, alphas, scale):
    term = bsrops.USRNetDataTerm(y, kernel, scale)
    for i in range(alphas.shape[1]):
        z = term.solve(z, alphas[:, i])
    return z


CHAINS = {"official": official_chain, "hoisted": hoisted_chain, "bsrops": bsrops_chain}


def make_case(kind, provider, mode, size):
    """A zero-argument callable running `provider`'s chain once in `mode` on fresh inputs."""
    chain = CHAINS[provider]
    z, y, kernel, alphas, grad_out = make_inputs(kind, size)
    scale = shape(kind, size)["s"]
    if mode == "forward":
        def run():
            with torch.no_grad():
                return chain(z, y, kernel, alphas, scale)
        return run
    z.requires_grad_()
    alphas.requires_grad_()

    def reset():
        z.grad = None
        alphas.grad = None

    def run():
        reset()
        out = chain(z, y, kernel, alphas, scale)
        out.backward(grad_out)
        return out, z.grad, alphas.grad
    run.reset = reset
    return run


def native_calls():
    return bsrops.kernel_calls().get("usrnet_solve.cpu", 0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("kind", KINDS)
def test_usrnet_data_step(benchmark, bench_size, kind, provider, mode):
    benchmark.group = f"usrnet_data_step/{kind}"
    benchmark.name = f"{provider} {mode}"
    if kind == "large" and mode == "forward+backward":
        pytest.skip("the large image is the inference case: forward only")
    if provider == "bsrops":
        info = bsrops.backend_info("cpu")
        assert info["backend"] == "cpu", f"bsrops would not run its native cpu backend: {info}"
    d = shape(kind, bench_size)
    extra = {"kind": kind, "provider": provider, "mode": mode, "size": bench_size, **d,
             "threads": torch.get_num_threads()}
    # the smoke run exercises the memory helper once (bsrops, large image)
    extra.update(_memory_info(benchmark, make_case, kind, provider, mode, bench_size,
                              always=kind == "large" and provider == "bsrops"))
    run = make_case(kind, provider, mode, bench_size)
    before = native_calls()
    out = _benchmark(benchmark, run, extra)
    after = native_calls()
    if provider == "bsrops":
        # USRNetDataTerm's backward (y, kernel fixed) is a solve too: see _SolveForZAndAlpha
        assert after > before, "USRNetDataTerm.solve did not run the cpu kernel"
        if mode == "forward+backward":
            assert out[1] is not None and out[2] is not None
    else:
        assert after == before, "the reference providers must not run bsrops kernels"
