"""Benchmarks of bsrops.compat (CPU): each object against its original's op sequence, at its codebase's training
shapes.

Kinds (BSR_BENCH_SIZE=paper, the default; float32; forward+backward takes the gradients training needs):
  kair_datanet        KAIR USRNet: HR 96x96, s=4, 25x25 kernels, K=8 data steps (the prior between them left
                      out), batch 16 of USRNet's 48; gradients for x and the alphas
  dan_batch_blur      DAN: 256x256 HR, 21x21 per-image kernels, stride 1, batch 16 of DAN's 64
  dan_dpcg            DANv2's Restorer group: 64 ch, 64x64 LR, 1x1 kernel code, nb=10 blocks, batch 2 of 64
  basicsr_filter2d    Real-ESRGAN's degradation blur: batch 12 x 256x256, 21x21 per-image kernels, stride 1
  basicsr_filter2d_shared  the same with one (1, 21, 21) kernel for the batch
  pdm_{per_image,per_pixel}_k{21,11}  PDM-SR: batch 32 x 128x128, s=4, (B, k*k, 1, 1) and (B, k*k, 32, 32)
Providers: original (the op sequence below, eager), compat (the bsrops.compat object); for KAIR hoisted
(bsrops.USRNetDataTerm: the invariants once, K solves), for PDM's per-pixel kernels unfold (below). Modes:
forward (no autograd), forward+backward.

The originals' op sequences, written in this repository and checked against the originals' code:
- KAIR's USRNet.forward and DataNet (network_usrnet_v1.py): FB = p2o(k), FBC, F2B = |FB|^2, FBFy once; per step
  FR = FBFy + fft2(alpha x), the block means of FB * FR and F2B by splits (chunks stacked and concatenated),
  the division, FBC times the result repeated sf x sf, ifft2: `official_precompute` and `data_net` of
  bsrops.reference.usrnet_data_step.
- DAN's BatchBlur and BasicSR's filter2D: reflect pad, the kernel repeated over the channels, one grouped
  conv2d (a plain conv2d over (B*C, 1, H, W) for one kernel): bsrops.reference.blur_downsample_conv.
- PDM-SR's KernelModel: x seen as B*C single-channel images, reflect pad k // 2, F.unfold at stride s, the
  patches times the kernel (broadcast over the channels, and over the LR pixels for a per-image kernel), summed
  over the taps: `kernel_model_blur` below. For per-pixel kernels also `unfold`:
  bsrops.reference.blur_downsample_unfold, the same with F.unfold over (B, C, H, W), which it runs faster than
  over B*C single-channel images.
- DANv2's DPCG: nb blocks (conv, in-place LeakyReLU, conv on each path; x_img + f1 * f2, x_cond + f2 written
  back to the list), then the list's items added to themselves: bsrops.reference.dpcb.DPCBReference blocks.

    pytest benchmarks/bench_compat.py --benchmark-only
    BSR_BENCH_SIZE=smoke pytest benchmarks --benchmark-disable        # CI smoke run

The case builder make_case is also what benchmarks/check_targets.py runs (in fresh processes).
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import bench_usrnet_data_step as usrnet_bench
from bench_blur_downsample import _benchmark
from bsrops.compat import basicsr, dan, kair, unpairedsr
from bsrops.reference import blur_downsample as blur_ref
from bsrops.reference import usrnet_data_step as usrnet_ref
from bsrops.reference.dpcb import DPCBReference

PAPER_BLURS = {f"pdm_{layout}_k{k}": dict(n=32, c=3, h=128, w=128, k=k, s=4, per_pixel=layout == "per_pixel")
               for layout in ("per_image", "per_pixel") for k in (21, 11)}
PAPER = {
    "kair_datanet": dict(n=16, c=3, h=24, w=24, s=4, k=25, iterations=8),
    "dan_batch_blur": dict(n=16, c=3, h=256, w=256, k=21, s=1),
    "dan_dpcg": dict(n=2, c=64, h=64, w=64, k1=3, k2=1, nb=10),
    "basicsr_filter2d": dict(n=12, c=3, h=256, w=256, k=21, s=1),
    "basicsr_filter2d_shared": dict(n=12, c=3, h=256, w=256, k=21, s=1),
    **PAPER_BLURS,
}
SMOKE_CHANGES = {"kair_datanet": dict(h=4, w=4, iterations=2), "dan_batch_blur": dict(k=6),
                 "dan_dpcg": dict(c=8, h=8, w=8, nb=2)}
SHAPES = {"paper": PAPER,
          "smoke": {kind: {**d, "n": 2, "h": 16, "w": 16, **({"k": 5} if "k" in d else {}),
                           **SMOKE_CHANGES.get(kind, {})} for kind, d in PAPER.items()}}
KINDS = tuple(SHAPES["paper"])
MODES = ("forward", "forward+backward")
TRAINING_BATCH = {"kair_datanet": 48, "dan_batch_blur": 64, "dan_dpcg": 64}  # where the paper size takes fewer


def shape(kind, size):
    return SHAPES[size][kind]


def providers(kind):
    extra = {"kair_datanet": ("hoisted",), "pdm_per_pixel_k21": ("unfold",), "pdm_per_pixel_k11": ("unfold",)}
    return ("original", "compat", *extra.get(kind, ()))


def describe(kind, size):
    """The shape of a kind, as a row name shows it (with the codebase's batch where the benchmark takes fewer)."""
    d = shape(kind, size)
    batch = f"N={d['n']}" + (f" of {TRAINING_BATCH[kind]}" if size == "paper" and kind in TRAINING_BATCH else "")
    if kind == "kair_datanet":
        return f"{batch}, HR {d['s'] * d['h']}x{d['s'] * d['w']}, s={d['s']}, k={d['k']}, K={d['iterations']}"
    if kind == "dan_dpcg":
        return f"{batch}, {d['c']} ch, {d['h']}x{d['w']}, cond 1x1, nb={d['nb']}"
    return f"{batch}, {d['h']}x{d['w']}, k={d['k']}, s={d['s']}"


def run_case(fn, leaves, grad_outs, mode, module=None):
    """A zero-argument callable running fn(*leaves) once in `mode`; forward+backward takes the gradients of the
    leaves (and of the module's parameters)."""
    if mode == "forward":
        def run():
            with torch.no_grad():
                return fn(*leaves)
        return run
    for leaf in leaves:
        leaf.requires_grad_()

    def run():
        for leaf in leaves:
            leaf.grad = None
        if module is not None:
            module.zero_grad(set_to_none=True)
        out = fn(*leaves)
        torch.autograd.backward(out, grad_outs)
        return out, [leaf.grad for leaf in leaves]
    return run


def compat_datanet_chain(z, y, kernel, alphas, scale):
    """KAIR's USRNet loop with the swapped data module: the spectra as USRNet.forward, K DataNet calls."""
    fb, fbc, f2b, fbfy = usrnet_ref.official_precompute(y, kernel, scale)
    data_net = kair.DataNet()
    for i in range(alphas.shape[1]):
        z = data_net(z, fb, fbc, f2b, fbfy, alphas[:, i].view(-1, 1, 1, 1), scale)
    return z


DATANET_CHAINS = {"original": usrnet_bench.official_chain, "compat": compat_datanet_chain,
                  "hoisted": usrnet_bench.bsrops_chain}


def datanet_case(provider, mode, size):
    d = shape("kair_datanet", size)
    gen = torch.Generator().manual_seed(0)
    hr = (d["n"], d["c"], d["s"] * d["h"], d["s"] * d["w"])
    z, grad_out = torch.randn(hr, generator=gen), torch.randn(hr, generator=gen)
    y = torch.randn(d["n"], d["c"], d["h"], d["w"], generator=gen)
    kernel = torch.rand(d["n"], d["k"], d["k"], generator=gen)
    kernel /= kernel.sum(dim=(1, 2), keepdim=True)
    alphas = torch.rand(d["n"], d["iterations"], generator=gen) * 0.1 + 0.01
    chain = DATANET_CHAINS[provider]
    return run_case(lambda a, b: chain(a, y, kernel, b, d["s"]), [z, alphas], [grad_out], mode)


def dpcg_case(provider, mode, size):
    """DANv2's DPCG on the [img, cond] list; the original's group doubles what its blocks leave in the list."""
    d = shape("dan_dpcg", size)
    torch.manual_seed(0)
    group = dan.DPCG(d["c"], d["c"], d["k1"], d["k2"], d["nb"])
    fn = lambda img, cond: group([img, cond])  # noqa: E731
    if provider == "original":
        blocks = nn.Sequential(*[DPCBReference(d["c"], d["c"], d["k1"], d["k2"]) for _ in range(d["nb"])])
        blocks.load_state_dict(group.body.state_dict())
        group, fn = blocks, lambda img, cond: [t + t for t in blocks([img, cond])]
    gen = torch.Generator().manual_seed(0)
    img, cond, grad_img, grad_cond = (torch.randn(d["n"], d["c"], *hw, generator=gen)
                                      for hw in ((d["h"], d["w"]), (1, 1), (d["h"], d["w"]), (1, 1)))
    return run_case(fn, [img, cond], [grad_img, grad_cond], mode, group)


def kernel_model_blur(x, kernel, scale):
    """PDM-SR KernelModel's blur: x as B*C single-channel images, reflect pad k // 2, unfold at stride s, the patches
    times the kernel (B, k*k, 1, 1) or (B, k*k, H/s, W/s), summed over the taps."""
    n, c, height, width = x.shape
    k = math.isqrt(kernel.shape[1])
    padded = F.pad(x.view(n * c, 1, height, width), (k // 2,) * 4, mode="reflect")
    patches = F.unfold(padded, k, stride=scale).view(n, c, k * k, height // scale, width // scale)
    return (patches * kernel.unsqueeze(1)).sum(2)


BLURS = {  # kind: (original, compat[, unfold]), each fn(x, kernel, stride)
    "dan_batch_blur": (lambda x, kernel, s: blur_ref.blur_downsample_conv(x, kernel, s, "reflect"),
                       lambda x, kernel, s: dan.BatchBlur(kernel.shape[-1])(x, kernel)),
    "basicsr_filter2d": (lambda x, kernel, s: blur_ref.blur_downsample_conv(x, kernel, s, "reflect"),
                         lambda x, kernel, s: basicsr.filter2D(x, kernel)),
    "basicsr_filter2d_shared": (lambda x, kernel, s: blur_ref.blur_downsample_conv(x, kernel[0], s, "reflect"),
                                lambda x, kernel, s: basicsr.filter2D(x, kernel)),
    **{kind: (kernel_model_blur, unpairedsr.blur,
              lambda x, kernel, s: blur_ref.blur_downsample_unfold(x, kernel, s, "reflect")) for kind in PAPER_BLURS},
}


def blur_kernel(kind, d, gen):
    """Softmax-normalised kernels in the layout the codebase passes."""
    k, out_h, out_w = d["k"], -(-d["h"] // d["s"]), -(-d["w"] // d["s"])
    if kind.startswith("pdm"):
        spatial = (out_h, out_w) if d["per_pixel"] else (1, 1)
        return torch.softmax(torch.randn(d["n"], k * k, *spatial, generator=gen), 1)
    images = 1 if kind.endswith("shared") else d["n"]
    return torch.softmax(torch.randn(images, k * k, generator=gen), 1).view(images, k, k)


def blur_case(kind, provider, mode, size):
    d = shape(kind, size)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(d["n"], d["c"], d["h"], d["w"], generator=gen)
    kernel = blur_kernel(kind, d, gen)
    grad_out = torch.randn(d["n"], d["c"], -(-d["h"] // d["s"]), -(-d["w"] // d["s"]), generator=gen)
    fn = BLURS[kind][providers(kind).index(provider)]
    return run_case(lambda a, b: fn(a, b, d["s"]), [x, kernel], [grad_out], mode)


def make_case(kind, provider, mode, size):
    """A zero-argument callable running `provider` of `kind` once in `mode` on fixed inputs."""
    if kind == "kair_datanet":
        return datanet_case(provider, mode, size)
    if kind == "dan_dpcg":
        return dpcg_case(provider, mode, size)
    return blur_case(kind, provider, mode, size)


def runs_bsrops(run):
    """Whether run() calls a bsrops op (in inference, DPCG's blocks may run no bsrops kernel of their own)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()
    return any(event.name.startswith("bsrops::") for event in profile.events())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind,provider", [(kind, provider) for kind in KINDS for provider in providers(kind)])
def test_compat(benchmark, bench_size, kind, provider, mode):
    benchmark.group = f"compat/{kind}"
    benchmark.name = f"{provider} {mode}"
    extra = {"kind": kind, "provider": provider, "mode": mode, "size": bench_size, **shape(kind, bench_size),
             "threads": torch.get_num_threads()}
    run = make_case(kind, provider, mode, bench_size)
    assert runs_bsrops(run) == (provider in ("compat", "hoisted")), "bsrops must run for compat and hoisted only"
    _benchmark(benchmark, run, extra)
