"""The contract between a method and the engine (bsr/engine.py).

The engine owns everything generic: the loop, data loading, DDP wrapping, AMP,
checkpoints (atomic, with RNG states), resume, SIGINT/SIGTERM, the NaN guard,
logging, validation cadence. A method owns its networks, optimisers, schedulers,
its degradation of training data and one training step.

Data the engine hands to a method (tensors float32 RGB in [0, 1], NCHW):
- `data_kind = "hr"`: training batches are {"hr": (B, 3, P, P)} crops (P = data.hr_patch);
  the method synthesises its own LR inside `train_step` (USRNet, DANv2).
- `data_kind = "unpaired"`: batches are {"hr": (B, 3, P, P), "lr": (B, 3, P/s, P/s)} from
  unrelated images (PDM, RealSR, USR_DA).
- Validation items are {"name": str, "hr": (1, 3, H, W), "lr": (1, 3, H/s, W/s)} plus
  "kernel" (k, k) when the true degradation kernel is known. For data_kind "hr" the LR is
  made by `method.degrade_for_validation(hr, index)` (deterministic); for "unpaired" the
  data module degrades with the documented demo degradation (or reads paired folders).
"""
import torch


class Method:
    name = "base"
    data_kind = "hr"  # "hr" or "unpaired" (see the module docstring)

    def __init__(self, cfg, device):
        self.cfg = cfg
        self.device = torch.device(device)
        # Filled by the subclass; the engine saves/loads every entry by name and may
        # replace a network entry by its DDP wrapper (call self.nets[...] in train_step,
        # never a reference kept elsewhere).
        self.nets = {}
        self.optimizers = {}
        self.schedulers = {}

    def train_step(self, batch, step):
        """One iteration: forward, losses, backward, optimiser steps (the method zeroes
        grads and steps its own optimisers, since GAN methods alternate). Returns
        {loss_name: float}; the engine stops on a non-finite value before saving."""
        raise NotImplementedError

    @torch.no_grad()
    def super_resolve(self, lr, kernel=None, noise_level=None):
        """(N, 3, h, w) LR -> (N, 3, s*h, s*w) SR. Blind methods ignore kernel/noise_level;
        non-blind ones (USRNet) need them. Networks are in eval mode when this is called."""
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, item):
        """One validation item -> {"sr": tensor, optionally "kernel_est": (k, k) tensor,
        and images to log under other keys}. Metrics are computed by the engine."""
        return {"sr": self.super_resolve(item["lr"], item.get("kernel"), item.get("noise_level"))}

    def degrade_for_validation(self, hr, index):
        """For data_kind "hr": deterministic LR of validation image `index` ->
        {"lr": tensor, "kernel": (k, k) tensor or absent, "noise_level": float or absent}."""
        raise NotImplementedError

    def extra_state(self):
        """Anything beyond nets/optimisers/schedulers to checkpoint (e.g. a PCA matrix)."""
        return {}

    def load_extra_state(self, state):
        pass
