"""Host time per call of each op (CPU): forward+backward on tiny tensors, where the arithmetic is negligible and
what is timed is the Python entry point (all its input checks), the dispatcher, autograd and the kernels' fixed
costs, against the eager PyTorch ops each op replaces.

    .venv/bin/python benchmarks/bench_overhead.py            # the table
    .venv/bin/python benchmarks/bench_overhead.py --calls 3000

Cases (float32, 1 thread; every input and parameter requires a gradient; the incoming gradients are fixed):
  dpcb              x_img 1x4x6x6, x_cond 1x4x1x1, 3x3 / 1x1 convs: bsrops.dpcb against the eager block
                    (conv, in-place LeakyReLU, conv on each path; x_img + f1 * f2, x_cond + f2)
  patchgan_conv     x 1x4x8x8, 4->8 4x4 s2 conv, instance norm, LeakyReLU: bsrops.patchgan_conv against conv2d,
                    instance_norm, in-place LeakyReLU
  blur_downsample   x 1x3x8x8, per-image 3x3 kernel, s=2, reflect: bsrops.blur_downsample against reflect pad +
                    grouped conv2d (bsrops.reference.blur_downsample_conv)
  usrnet_data_step  z 1x3x8x8, y 1x3x4x4, 3x3 kernel, alpha (1,), s=2: bsrops.usrnet_data_step against USRNet's
                    official op sequence (bsrops.reference.usrnet_data_step.usrnet_data_step_official)
Each call's host time is the calling thread's CPU time (time.thread_time_ns: with 1 thread the CPU autograd engine
and every kernel run on the caller), so other processes on the machine add little; ours and eager are timed
interleaved in blocks of 50 calls, and each gets the median over `calls` calls.

The oneDNN post-op threshold of bsrops.ops._common.onednn_conv_leaky_relu (ONEDNN_POST_OP_MIN_VALUES = 16384
input values), measured at 1 thread, 64 -> 64 3x3 convs in channels_last unless noted, post-op against conv2d + the
op's in-place LeakyReLU kernel: 1x4x6x6 (4->4) 46 us vs 11 us; 1x16x8x8 51 vs 17 us; 1x64x8x8 116 vs 88 us;
1x64x16x16 (16K values) 235 vs 246 us; 1x64x32x32 1.51 vs 1.57 ms; 2x64x64x64 13.0 vs 12.1 ms (NCHW 11.8 vs 12.4);
so the post-op's fixed setup loses clearly below 16K values and the two are within noise above (load 2-6 on the
shared 2 cores).
"""
import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import bsrops
from bsrops.reference.blur_downsample import blur_downsample_conv
from bsrops.reference.usrnet_data_step import usrnet_data_step_official

OPS = ("dpcb", "patchgan_conv", "blur_downsample", "usrnet_data_step")
BLOCK = 50  # calls of one provider in a row
SLOPE = 0.2


def _leaves(gen, *shapes):
    return [torch.randn(*shape, generator=gen).requires_grad_() for shape in shapes]


def _run(fn, inputs, grads):
    """A zero-argument callable: forward of fn(*inputs), then backward with the fixed grads."""
    def run():
        for t in inputs:
            t.grad = None
        outputs = fn(*inputs)
        outputs = outputs if isinstance(outputs, (tuple, list)) else [outputs]
        torch.autograd.backward(outputs, grads)
    return run


def _eager_dpcb(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4):
    f1 = F.conv2d(F.leaky_relu_(F.conv2d(x_img, w1, b1, padding=1), SLOPE), w2, b2, padding=1)
    f2 = F.conv2d(F.leaky_relu_(F.conv2d(x_cond, w3, b3)), w4, b4)
    return x_img + f1 * f2, x_cond + f2


def dpcb_case(provider, gen):
    c = 4
    inputs = _leaves(gen, (1, c, 6, 6), (1, c, 1, 1), (c, c, 3, 3), (c,), (c, c, 3, 3), (c,), (c, c, 1, 1), (c,),
                     (c, c, 1, 1), (c,))
    grads = [torch.randn(1, c, 6, 6, generator=gen), torch.randn(1, c, 1, 1, generator=gen)]
    fn = _eager_dpcb if provider == "eager" else lambda *args: bsrops.dpcb(*args, negative_slope=SLOPE)
    return _run(fn, inputs, grads)


def _eager_patchgan(x, weight, bias):
    return F.leaky_relu_(F.instance_norm(F.conv2d(x, weight, bias, 2, 1)), SLOPE)


def patchgan_case(provider, gen):
    inputs = _leaves(gen, (1, 4, 8, 8), (8, 4, 4, 4), (8,))
    grads = [torch.randn(1, 8, 4, 4, generator=gen)]
    fn = _eager_patchgan if provider == "eager" else lambda x, w, b: bsrops.patchgan_conv(x, w, b, 2, 1, "instance")
    return _run(fn, inputs, grads)


def blur_case(provider, gen):
    x, kernel = _leaves(gen, (1, 3, 8, 8), (1, 3, 3))
    grads = [torch.randn(1, 3, 4, 4, generator=gen)]
    fn = blur_downsample_conv if provider == "eager" else bsrops.blur_downsample
    return _run(lambda a, b: fn(a, b, 2, "reflect"), [x, kernel], grads)


def usrnet_case(provider, gen):
    z, y, kernel, alpha = _leaves(gen, (1, 3, 8, 8), (1, 3, 4, 4), (1, 3, 3), (1,))
    with torch.no_grad():
        alpha.abs_().add_(0.1)
    grads = [torch.randn(1, 3, 8, 8, generator=gen)]
    fn = usrnet_data_step_official if provider == "eager" else bsrops.usrnet_data_step
    return _run(lambda *args: fn(*args, 2), [z, y, kernel, alpha], grads)


CASES = {"dpcb": dpcb_case, "patchgan_conv": patchgan_case, "blur_downsample": blur_case,
         "usrnet_data_step": usrnet_case}


def make_case(op, provider):
    """The forward+backward callable of `op` for provider "bsrops" or "eager"."""
    return CASES[op](provider, torch.Generator().manual_seed(0))


def host_times(op, calls=1000):
    """{provider: median host seconds per call} for op, bsrops and eager timed interleaved at 1 thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {provider: make_case(op, provider) for provider in ("bsrops", "eager")}
        samples = {provider: [] for provider in runs}
        for run in runs.values():
            for _ in range(20):
                run()
        while min(len(s) for s in samples.values()) < calls:
            for provider, run in runs.items():
                for _ in range(BLOCK):
                    start = time.thread_time_ns()
                    run()
                    samples[provider].append(time.thread_time_ns() - start)
        return {provider: statistics.median(s[:calls]) * 1e-9 for provider, s in samples.items()}
    finally:
        torch.set_num_threads(threads)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="calls per provider (default 1000)")
    parser.add_argument("--only", choices=OPS, action="append", help="ops to time (default all)")
    args = parser.parse_args(argv)
    print("| op | bsrops (us) | eager (us) | ratio |\n|---|---|---|---|")
    for op in args.only or OPS:
        t = host_times(op, args.calls)
        print(f"| {op} | {t['bsrops'] * 1e6:.0f} | {t['eager'] * 1e6:.0f} | {t['bsrops'] / t['eager']:.2f}x |",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
