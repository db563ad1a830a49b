"""Data-only throughput: the training DataLoader of each method's paper preset alone (bsr.data.train_loader
over the method's training set, no network), in samples per second, on a folder of generated DIV2K-sized
images, read through their prepared form (bsr.data.cache: memory-mapped decoded pixels) and by decoding
each crop's file (data.cache=none); and the first batch of a fresh process on an already prepared folder.

Shapes (BSR_BENCH_SIZE):
  paper  100 HR PNGs of 2040 x 1356 (DIV2K's size), 100 LR PNGs of 510 x 339 (its x4 LR, the unpaired
         methods' target domain); each paper preset's batch and crops; 2 workers
  smoke  4 HR images of 128 x 96 and their LR, batch 2, HR crops 32, no workers (CI: each body once)

    pytest benchmarks/bench_data.py --benchmark-only
    python benchmarks/bench_data.py [--size smoke]     # the table (check_targets.py checks its targets)

Rates are the steady state: the first batch of each worker (their start) is not counted.
"""
import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, os.path.dirname(HERE))

from bsr import config, data, methods  # noqa: E402
from bsr.data.io import write_uint8  # noqa: E402

METHODS = ("usrnet", "dan", "pdm", "realsr", "usrda")
FORMS = ("prepared", "decoded")
SIZES = {
    "paper": dict(images=100, hr=(1356, 2040), scale=4, workers=2, batches=30, decoded_batches=3, overrides=[]),
    "smoke": dict(images=4, hr=(96, 128), scale=4, workers=0, batches=2, decoded_batches=1,
                  overrides=["train.batch_size=2", "data.hr_patch=32"]),
}


def write_folder(folder, count, height, width, seed):
    """`count` PNGs of height x width: smooth random colour fields with fine noise (a photograph's mix of
    flat and textured regions, so that a PNG decodes at a photograph's cost)."""
    import cv2

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for index in range(count):
        coarse = rng.integers(0, 256, (max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
        image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        image += rng.integers(-8, 9, image.shape, dtype=np.int16)
        write_uint8(os.path.join(folder, f"{index:04d}.png"), np.clip(image, 0, 255).astype(np.uint8))
    return folder


@contextlib.contextmanager
def image_folders(size):
    """(hr folder, lr folder, cache folder) of the `size` shapes, in a temporary folder removed afterwards."""
    s = SIZES[size]
    height, width = s["hr"]
    with tempfile.TemporaryDirectory(prefix="bsr-bench-data-") as root:
        hr = write_folder(os.path.join(root, "hr"), s["images"], height, width, seed=0)
        lr = write_folder(os.path.join(root, "lr"), s["images"], height // s["scale"], width // s["scale"], seed=1)
        yield hr, lr, os.path.join(root, "cache")


def paper_config(method, size, hr, lr, cache):
    """The paper preset of `method` reading `hr` (and `lr`), with data.cache = `cache` ("none": decode)."""
    overrides = [f"data.hr={hr}", f"data.lr={lr}", f"data.cache={cache}"] + SIZES[size]["overrides"]
    return config.load(method, "paper", overrides=overrides)


def paper_loader(method, size, hr, lr, cache):
    """The training DataLoader of `method`'s paper preset over the folders (bsr.data.train_loader)."""
    cfg = paper_config(method, size, hr, lr, cache)
    kind = methods.get(method)
    dataset = data.train_dataset(cfg, kind.data_kind, kind.augment_crops)
    return data.train_loader(dataset, cfg.train.batch_size, cfg.seed, SIZES[size]["workers"]), cfg


def cpu_seconds(pids):
    """User + system CPU seconds of this process and the processes `pids` (Linux /proc; None elsewhere)."""
    try:
        ticks = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    except OSError:
        return None
    return time.process_time() + ticks / os.sysconf("SC_CLK_TCK")


def samples_per_second(loader, batch_size, batches, workers):
    """(samples per second, CPU seconds per sample of this process and the workers together) over
    `batches` batches, after each worker's first batch."""
    stream = iter(loader)
    for _ in range(max(1, workers)):
        next(stream)
    pids = [worker.pid for worker in getattr(stream, "_workers", [])]
    start, cpu = time.perf_counter(), cpu_seconds(pids)
    for _ in range(batches):
        next(stream)
    elapsed, samples = time.perf_counter() - start, batches * batch_size
    end_cpu = cpu_seconds(pids)
    return samples / elapsed, None if cpu is None or end_cpu is None else (end_cpu - cpu) / samples


def throughput(method, form, size, hr, lr, cache):
    """(samples per second, CPU seconds per sample) of `method`'s paper loader, reading the prepared form
    or decoding."""
    loader, cfg = paper_loader(method, size, hr, lr, cache if form == "prepared" else "none")
    s = SIZES[size]
    batches = s["batches"] if form == "prepared" else s["decoded_batches"]
    return samples_per_second(loader, cfg.train.batch_size, batches, s["workers"])


FIRST_BATCH = """
import sys, time
sys.path.insert(0, {here!r})
import bench_data
loader, _ = bench_data.paper_loader("usrnet", {size!r}, {hr!r}, {lr!r}, {cache!r})
next(iter(loader))
print("first batch", flush=True)
"""


def first_batch_seconds(size, hr, lr, cache):
    """Seconds from starting a Python process to its first batch of USRNet's paper loader over the
    already prepared folder (interpreter start and imports included)."""
    script = FIRST_BATCH.format(here=HERE, size=size, hr=hr, lr=lr, cache=cache)
    start = time.perf_counter()
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as child:
        line = child.stdout.readline()
        elapsed = time.perf_counter() - start
    if child.returncode or line.strip() != "first batch":
        raise RuntimeError(f"the first-batch process failed (exit status {child.returncode})")
    return elapsed


def prepare(hr, lr, cache):
    """Prepare both folders (bsr.data.cache.prepare); returns the seconds it took."""
    start = time.perf_counter()
    for folder in (hr, lr):
        data.cache.prepare(folder, cache, log=lambda line: None)
    return time.perf_counter() - start


def measure(size, report=print):
    """{"prepare": s, "first_batch": s, (method, form): (samples/s, CPU s per sample)} on freshly generated
    folders."""
    results = {}
    with image_folders(size) as (hr, lr, cache):
        results["prepare"] = prepare(hr, lr, cache)
        report(f"prepared {SIZES[size]['images']} HR + {SIZES[size]['images']} LR images in {results['prepare']:.1f} s")
        results["first_batch"] = first_batch_seconds(size, hr, lr, cache)
        report(f"first batch of a fresh process (usrnet paper, prepared): {results['first_batch']:.2f} s")
        for method in METHODS:
            for form in FORMS:
                rate, cpu = results[method, form] = throughput(method, form, size, hr, lr, cache)
                report(f"{method} {form}: {rate:.0f} samples/s, {format_cpu(cpu)} per sample")
    return results


def describe(method, size):
    """'batch B, HR P x P (+ LR p x p)' of the method's paper preset at `size`."""
    cfg = paper_config(method, size, None, None, "none")
    lr = f" + LR {cfg.data.hr_patch // cfg.data.scale}²" if methods.get(method).data_kind == "unpaired" else ""
    return f"{cfg.train.batch_size} x {cfg.data.hr_patch}²{lr}"


def format_cpu(seconds):
    return "CPU time unknown" if seconds is None else f"{seconds * 1e3:.2f} CPU ms"


def format_table(results, size):
    lines = ["| method (paper preset) | batch x crops | prepared: samples/s | CPU per sample | "
             "decoded: samples/s | CPU per sample |", "|---|---|---|---|---|---|"]
    for method in METHODS:
        (prepared, prepared_cpu), (decoded, decoded_cpu) = results[method, "prepared"], results[method, "decoded"]
        lines.append(f"| {method} | {describe(method, size)} | {prepared:.0f} | {format_cpu(prepared_cpu)} | "
                     f"{decoded:.1f} | {format_cpu(decoded_cpu)} |")
    lines += ["", f"- workers: {SIZES[size]['workers']}; CPU per sample: the main process and the workers together; "
                  f"preparing the folders: {results['prepare']:.1f} s; first batch of a fresh process: "
                  f"{results['first_batch']:.2f} s"]
    return "\n".join(lines)


# ---- pytest ----

@pytest.fixture(scope="module")
def folders(bench_size):
    with image_folders(bench_size) as (hr, lr, cache):
        prepare(hr, lr, cache)
        yield hr, lr, cache


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("method", METHODS)
def test_data_throughput(benchmark, bench_size, folders, method, form):
    """Times one batch of the method's paper loader; the batches hold the preset's crops."""
    hr, lr, cache = folders
    loader, cfg = paper_loader(method, bench_size, hr, lr, cache if form == "prepared" else "none")
    benchmark.group = f"data/{method}/{bench_size}"
    stream = iter(loader)
    batch = benchmark(next, stream)
    patch, size = cfg.data.hr_patch, cfg.train.batch_size
    assert batch["hr"].shape == (size, 3, patch, patch) and batch["hr"].dtype == torch.float32
    if methods.get(method).data_kind == "unpaired":
        assert batch["lr"].shape == (size, 3, patch // cfg.data.scale, patch // cfg.data.scale)
    benchmark.extra_info.update(batch_size=size, hr_patch=patch, workers=SIZES[bench_size]["workers"])


def test_first_batch(benchmark, bench_size, folders):
    seconds = benchmark.pedantic(first_batch_seconds, args=(bench_size, *folders), rounds=1, iterations=1)
    benchmark.extra_info["first_batch_s"] = seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default=os.environ.get("BSR_BENCH_SIZE", "paper"))
    args = parser.parse_args(argv)
    results = measure(args.size)
    print(f"\nload average (1 min): {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs\n")
    print(format_table(results, args.size))


if __name__ == "__main__":
    main()
