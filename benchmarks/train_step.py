"""One training step of a bsr method with every bsrops op on a chosen backend: the shared body
of the bench_<method>_train_step.py files (they differ only in their shapes)."""
import contextlib
import os

import torch

import bsrops
from bsr import config, methods

BACKENDS = ("reference", "default")


def make_step(method_name, shape, backend):
    """A zero-argument callable running one training step of `method_name` at `shape`
    (dict: preset, batch, patch, overrides) on `backend` ("reference" or "default")."""
    cfg = config.load(method_name, shape["preset"], overrides=shape["overrides"] + [f"data.hr_patch={shape['patch']}"])
    torch.manual_seed(0)
    method = methods.get(method_name)(cfg, "cpu")
    batch = {"hr": torch.rand(shape["batch"], 3, shape["patch"], shape["patch"]), "seed": torch.arange(shape["batch"])}
    if method.data_kind == "unpaired":  # the target-domain LR crops
        lr_patch = shape["patch"] // cfg.data.scale
        batch["lr"] = torch.rand(shape["batch"], 3, lr_patch, lr_patch)

    def step():
        with bsrops.use_backend("reference") if backend == "reference" else contextlib.nullcontext():
            return method.train_step(batch, 0)
    return step


def benchmark_step(benchmark, method_name, shape, backend, op_name):
    """Times make_step(...) and asserts that the ops whose kernel counters name
    `op_name` ran on the backend asked for."""
    step = make_step(method_name, shape, backend)
    before = bsrops.kernel_calls()
    benchmark(step)
    after = bsrops.kernel_calls()
    ran = {k.split(".", 1)[1] for k in after if after[k] != before.get(k, 0) and op_name in k}
    ran.discard("composite")  # backend-independent glue around the kernels (e.g. _usrnet_precompute)
    expected = "reference" if backend == "reference" else bsrops.backend_info("cpu")["backend"]
    assert ran and all(b.startswith(expected) for b in ran), (ran, expected)
    benchmark.extra_info.update(shape, backends_ran=sorted(ran), threads=torch.get_num_threads(),
                                load_average=os.getloadavg()[0])
