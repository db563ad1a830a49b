"""One training step of each bsr method with every bsrops op on the `reference` backend (pure
PyTorch) against the default one (bsrops' native kernels).

Cases (what one step runs):
  usrnet         KAIR data synthesis with blur_downsample, the unrolled network on USRNetDataTerm,
                 L1, backward, Adam
  dan            DANv2: random Gaussian kernels, blur through blur_downsample, MATLAB bicubic, the
                 alternating loop on bsrops.nn.DPCB/DPCG, L1 on SR and kernel, backward, Adam
  pdm-invariant  PDM-SR: degradation + LR discriminator + SR, one kernel per image (the official
                 configs)
  pdm-variant    the same with a kernel per LR pixel (netK with 3x3 convs and the HR image mixed
                 in, which the official code cannot run at scale 4)
  realsr         a pool kernel through blur_downsample with symmetric padding, 8-bit LR, noise
                 injection, RRDB, RaGAN against the NLayer PatchGAN on bsrops.nn.PatchGANConv,
                 both Adam steps; KernelGAN runs 2 iterations (the pool is built before the timing)
  usrda          USR_DA: the discriminator update and the two generator updates, seven network
                 passes each, three VGG discriminators on bsrops.nn.PatchGANConv
The perceptual terms are off (VGG19's ImageNet weights cannot be downloaded here).

Shapes (BSR_BENCH_SIZE):
  paper  each paper's model at its crops, with a batch of 2 instead of the paper's (16-64) so
         that a CPU step takes seconds, not minutes (the ops' share is per image); PDM-SR keeps
         the official psnr/2020Track1 step (batch 32, HR 128 -> LR 32, k 11, netK and netN nf 64
         nb 8, EDSR 16x64)
  smoke  tiny models for CI (run once with --benchmark-disable)
  demo   (usrnet, dan; benchmarks/check_targets.py) the demo preset's model at its crops

    pytest benchmarks/bench_train_step.py --benchmark-only

Run as a script it prints, per case, one default-backend step on a device next to the data time of
that step: the method's paper DataLoader (benchmarks/bench_data.py: prepared form, 2 workers, generated
DIV2K-sized folders) delivering the step's batch, and the data/step ratio (the GPU target: <= 10%):

    python benchmarks/bench_train_step.py [--device auto] [--size paper|smoke] [--batch preset] [case ...]

`--batch preset` (the default on CUDA) steps at the paper preset's own batch; on the CPU the step
uses the shapes' batch above, and the data time is scaled to that batch.
"""
import argparse
import collections
import contextlib
import os
import statistics
import sys
import time

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, os.path.dirname(HERE))

import bsrops  # noqa: E402
from bsr import config, methods  # noqa: E402
from bsr.engine import resolve_device  # noqa: E402

BACKENDS = ("reference", "default")

REALSR = ["realsr.loss.perceptual=0", "realsr.kernelgan.iterations=2", "realsr.pretrained=none"]
PDM_SMOKE = ["pdm.kernel={nf: 8, nb: 1, ksize: 7}", "pdm.noise={nf: 8, nb: 1}", "pdm.sr={nf: 8, nb: 1}",
             "pdm.d_lr={nf: 8, nb: 2}"]
PDM_VARIANT = ["pdm.kernel.spatial=true", "pdm.kernel.mix=true"]


def pdm_shapes(kind):
    kind = kind + ["pdm.sr.pretrained=none"]  # the timed step does not depend on EDSR's starting weights
    return {"paper": dict(preset="paper", batch=32, patch=128, overrides=kind),
            "smoke": dict(preset="paper", batch=2, patch=32, overrides=kind + PDM_SMOKE)}


# method: bsr's method name; op: the op whose kernel counters show the backend that ran;
# shapes: {size: dict(preset, batch, patch, overrides)}
Case = collections.namedtuple("Case", "method op shapes")
CASES = {
    "usrnet": Case("usrnet", "usrnet", {
        "paper": dict(preset="paper", batch=2, patch=96, overrides=["usrnet.scales=[4]"]),
        "demo": dict(preset="demo", batch=8, patch=48, overrides=[]),
        "smoke": dict(preset="smoke", batch=2, patch=32, overrides=["usrnet.scales=[4]"]),
    }),
    "dan": Case("dan", "dpcb", {
        "paper": dict(preset="paper", batch=2, patch=256, overrides=[]),
        "demo": dict(preset="demo", batch=8, patch=64, overrides=[]),
        "smoke": dict(preset="demo", batch=2, patch=32,
                      overrides=["dan.nf=8", "dan.nb=1", "dan.ng=1", "dan.loop=2", "dan.pca_kernels=2000"]),
    }),
    "pdm-invariant": Case("pdm", "blur_downsample", pdm_shapes([])),
    "pdm-variant": Case("pdm", "blur_downsample", pdm_shapes(PDM_VARIANT)),
    "realsr": Case("realsr", "blur_downsample", {
        # the embedded photos have no flat 256x256 window: 32x32 ones (the LR crop) with a looser threshold
        "paper": dict(preset="paper", batch=2, patch=160,
                      overrides=REALSR + ["realsr.noise.patch=32", "realsr.noise.max_var=120", "realsr.noise.min_mean=0"]),
        "smoke": dict(preset="smoke", batch=2, patch=64, overrides=REALSR),
    }),
    "usrda": Case("usrda", "patchgan", {
        # batch 2 at LR 32 instead of 4 at LR 64: batch norm needs 2 values on the last 1x1 map
        "paper": dict(preset="paper", batch=2, patch=128, overrides=["usrda.loss.percept=0"]),
        "smoke": dict(preset="smoke", batch=2, patch=128, overrides=[]),
    }),
}


def make_step(method_name, shape, backend, device="cpu", batch_size=None):
    """A zero-argument callable running one training step of `method_name` at `shape`
    (dict: preset, batch, patch, overrides) on `backend` ("reference" or "default") on `device`, with
    `batch_size` crops (default: the shape's batch); the batch is on the device already."""
    cfg = config.load(method_name, shape["preset"], overrides=shape["overrides"] + [f"data.hr_patch={shape['patch']}"])
    torch.manual_seed(0)
    method = methods.get(method_name)(cfg, device)
    n = batch_size or shape["batch"]
    batch = {"hr": torch.rand(n, 3, shape["patch"], shape["patch"], device=device), "seed": torch.arange(n)}
    if method.data_kind == "unpaired":  # the target-domain LR crops
        lr_patch = shape["patch"] // cfg.data.scale
        batch["lr"] = torch.rand(n, 3, lr_patch, lr_patch, device=device)

    def step():
        with bsrops.use_backend("reference") if backend == "reference" else contextlib.nullcontext():
            return method.train_step(batch, 0)
    return step


def make_case(case, size, backend):
    """make_step of case `case` (a key of CASES) at shape `size`."""
    return make_step(CASES[case].method, CASES[case].shapes[size], backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", tuple(CASES))
def test_train_step(benchmark, bench_size, case, backend):
    """Times one step and asserts that the kernels of the case's op ran on the backend asked for."""
    shape = CASES[case].shapes[bench_size]
    benchmark.group = f"train_step/{case}/{bench_size}"
    step = make_step(CASES[case].method, shape, backend)
    before = bsrops.kernel_calls()
    benchmark(step)
    after = bsrops.kernel_calls()
    ran = {k.split(".", 1)[1] for k in after if after[k] != before.get(k, 0) and CASES[case].op in k}
    ran.discard("composite")  # backend-independent glue around the kernels (e.g. _usrnet_precompute)
    expected = "reference" if backend == "reference" else bsrops.backend_info("cpu")["backend"]
    assert ran and all(b.startswith(expected) for b in ran), (ran, expected)
    benchmark.extra_info.update(shape, backends_ran=sorted(ran), threads=torch.get_num_threads(),
                                load_average=os.getloadavg()[0])


# ---- script: step time next to data time ----

def step_seconds(step, device, repeats=3):
    """Median seconds of `repeats` calls of `step` after one warm-up call (CUDA: synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def preset_batch(case):
    """The paper preset's own train.batch_size of `case`."""
    return config.load(CASES[case].method, "paper").train.batch_size


def step_and_data(cases, size, device, use_preset_batch, report=print):
    """[(case, batch, step s, data s per batch)]: one default-backend step at `size` on `device` and the
    paper DataLoader's time for that batch (bench_data: prepared form, its workers)."""
    import bench_data

    rates = {}
    with bench_data.image_folders(size) as (hr, lr, cache):
        bench_data.prepare(hr, lr, cache)
        for method in sorted({CASES[c].method for c in cases}):
            rates[method] = bench_data.throughput(method, "prepared", size, hr, lr, cache)[0]
            report(f"data {method}: {rates[method]:.0f} samples/s")
    rows = []
    for case in cases:
        shape = CASES[case].shapes[size]
        batch = preset_batch(case) if use_preset_batch and size == "paper" else shape["batch"]
        seconds = step_seconds(make_step(CASES[case].method, shape, "default", device, batch), device)
        rows.append((case, batch, seconds, batch / rates[CASES[case].method]))
        report(f"step {case}: batch {batch}, {seconds * 1e3:.1f} ms")
    return rows


def format_rows(rows, device):
    lines = [f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
             f"bsrops backend {bsrops.backend_info(device.type)['backend']}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}", "",
             "| case | batch | step ms | data ms per batch | data / step |", "|---|---|---|---|---|"]
    for case, batch, step, data in rows:
        lines.append(f"| {case} | {batch} | {step * 1e3:.1f} | {data * 1e3:.1f} | {data / step:.1%} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description="one training step per method next to its data time")
    parser.add_argument("cases", nargs="*", metavar="case", help=f"cases to run (default all: {', '.join(CASES)})")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument("--size", choices=("paper", "smoke"), default="paper")
    parser.add_argument("--batch", choices=("preset", "shape"), default=None,
                        help="preset: the paper preset's batch (default on CUDA); shape: the CPU shapes' batch")
    args = parser.parse_args(argv)
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}; choose from {', '.join(CASES)}")
    device = resolve_device(args.device)
    use_preset = args.batch == "preset" or (args.batch is None and device.type == "cuda")
    cases = [c for c in args.cases or CASES if args.size in CASES[c].shapes]
    rows = step_and_data(cases, args.size, device, use_preset, report=lambda line: print(line, file=sys.stderr))
    print(format_rows(rows, device))
    return rows



def test_step_and_data_table(bench_size, capsys):
    """The script's table at smoke size: a row per case asked for, with a positive step and data time."""
    if bench_size != "smoke":
        pytest.skip("the script's table is timed by running the script (paper size takes minutes)")
    rows = main(["--size", "smoke", "--device", "cpu", "usrnet"])
    assert [(case, batch) for case, batch, _, _ in rows] == [("usrnet", CASES["usrnet"].shapes["smoke"]["batch"])]
    assert all(step > 0 and data > 0 for _, _, step, data in rows)
    assert "| usrnet | 2 |" in capsys.readouterr().out


if __name__ == "__main__":
    main()
