"""The training DataLoader: the seeded sample stream (datasets.SeededSampler) in batches, made by
data.num_workers worker processes."""
import os

import torch
from torch.utils.data import DataLoader

from .cache import usable_cpus
from .datasets import SeededSampler, collate_seeds

MAX_AUTO_WORKERS = 8
PREFETCH_BATCHES = 2  # batches each worker keeps ready


def resolve_workers(setting, local_world_size=None, cpus=None):
    """The number of worker processes for data.num_workers = `setting`: a whole number as it is; "auto"
    = min(8, cpus // local_world_size), where cpus defaults to the CPUs this process may use and
    local_world_size to torchrun's LOCAL_WORLD_SIZE (the training processes on this machine)."""
    if setting != "auto":
        return int(setting or 0)
    local_world_size = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return min(MAX_AUTO_WORKERS, (cpus or usable_cpus()) // local_world_size)


def train_loader(dataset, batch_size, seed, num_workers, start_step=0, rank=0, world_size=1, pin_memory=False):
    """A DataLoader of `dataset` continuing the seeded sample stream at `start_step` (batches of this
    process, `rank` of `world_size`); resolve_workers(num_workers) persistent workers, each keeping
    PREFETCH_BATCHES batches ready; `pin_memory`: batches in page-locked memory (CUDA training)."""
    workers = resolve_workers(num_workers)
    sampler = SeededSampler(len(dataset), batch_size, seed, start_step, rank, world_size)
    queue = {"persistent_workers": True, "prefetch_factor": PREFETCH_BATCHES} if workers else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_seeds,
                      generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory, **queue)
