"""GPU time and memory of the conv blocks (DPCB, PatchGAN) at the paper shapes (needs a CUDA device; CI has none).

    TRITON_INTERPRET=0 python benchmarks/gpu_conv_blocks.py

DPCB Restorer / Estimator and the PatchGAN block (benchmarks/bench_dpcb.py, bench_patchgan_conv.py):
the eager reference modules against bsrops on its `cuda` (CUDA C++) and `triton` backends, float32
with TF32 off, forward+backward (input and parameter gradients) and inference. Times: CUDA events
around 50 calls after 5 warm-ups; memory: the peak of torch's allocator during one call above what
was allocated before it (outputs and gradients included), exact on the GPU.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import torch  # noqa: E402

import bench_dpcb  # noqa: E402
import bench_patchgan_conv  # noqa: E402
import bsrops  # noqa: E402

CUDA = torch.device("cuda")


def blocks():
    """(name, eager fn, bsrops fn, modules, inputs) on the GPU."""
    for kind in bench_dpcb.KINDS:
        ours, reference = (m.to(CUDA) for m in bench_dpcb.make_modules(kind, "paper"))
        inputs = [t.to(CUDA) for t in bench_dpcb.make_inputs(kind, "paper")]
        yield (f"dpcb {kind}", lambda a, b, r=reference: tuple(r([a, b])), ours, [ours, reference], inputs)
    ours, reference = (m.to(CUDA) for m in bench_patchgan_conv.make_modules("paper"))
    d = bench_patchgan_conv.SHAPES["paper"]
    x = torch.randn(d["n"], d["cin"], d["h"], d["w"], device=CUDA)
    yield "patchgan 64->128 4x4 s2 instance", lambda a, r=reference: (r(a),), lambda a, o=ours: (o(a),), \
        [ours, reference], [x]


def runner(fn, modules, inputs, mode):
    if mode == "inference":
        def run():
            with torch.inference_mode():
                return fn(*inputs)
        return run
    leaves = [t.detach().requires_grad_() for t in inputs]
    grads = None

    def run():
        nonlocal grads
        for m in modules:
            m.zero_grad(set_to_none=True)
        for t in leaves:
            t.grad = None
        outs = fn(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        grads = grads or [torch.randn_like(o) for o in outs]
        torch.autograd.backward(outs, grads)
    return run


def time_ms(run, iters=50):
    for _ in range(5):
        run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def peak_mib(run):
    run()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2 ** 20


def main():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bsrops {bsrops.build_info()}")
    print("| block | mode | eager ms | cuda ms (speedup) | triton ms (speedup) | peak MiB eager / cuda / triton |")
    print("|---|---|---|---|---|---|")
    for name, eager, ours, modules, inputs in blocks():
        for mode in ("forward+backward", "inference"):
            row = {"eager": runner(eager, modules, inputs, mode)}
            times, peaks = {}, {}
            for backend in ("eager", "cuda", "triton"):
                run = row["eager"] if backend == "eager" else runner(ours, modules, inputs, mode)
                with bsrops.use_backend("cuda" if backend == "eager" else backend):
                    times[backend], peaks[backend] = time_ms(run), peak_mib(run)
            print(f"| {name} | {mode} | {times['eager']:.3f} | {times['cuda']:.3f} ({times['eager'] / times['cuda']:.2f}x)"
                  f" | {times['triton']:.3f} ({times['eager'] / times['triton']:.2f}x) | "
                  f"{peaks['eager']:.1f} / {peaks['cuda']:.1f} / {peaks['triton']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
