"""A tiny method for the engine tests: one 3x3 conv on a nearest-upsampled, seeded-noise LR.

Importing this module registers it as "toy" (not in bsr.methods.available(): tests only).
`toy.nan_at` makes the loss NaN at that iteration (NaN guard test).
"""
import torch
import torch.nn.functional as F

from bsr import config as config_lib
from bsr.methods import register
from bsr.methods.base import Method


@register("toy")
class Toy(Method):
    data_kind = "hr"

    inference_nets = ("net",)

    def __init__(self, cfg, device, for_training=True):
        super().__init__(cfg, device, for_training)
        self.nets["net"] = torch.nn.Conv2d(3, 3, 3, padding=1).to(self.device)
        self.optimizers["net"] = torch.optim.Adam(self.nets["net"].parameters(), lr=cfg.train.lr)
        self.schedulers["net"] = torch.optim.lr_scheduler.StepLR(self.optimizers["net"], step_size=2, gamma=0.5)

    def degrade(self, hr, seeds):
        lr = F.avg_pool2d(hr, self.cfg.data.scale)
        noise = torch.stack([torch.randn(lr.shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        return lr + 0.01 * noise.to(lr, non_blocking=True)

    def train_step(self, batch, step):
        sr = self.nets["net"](F.interpolate(self.degrade(batch["hr"], batch["seed"]), scale_factor=self.cfg.data.scale))
        loss = F.l1_loss(sr, batch["hr"]) + 0.01 * torch.rand(()) * 0  # touches the global RNG (resume must restore it)
        if step + 1 == self.cfg.toy.get("nan_at"):
            loss = loss * float("nan")
        self.optimize(loss)
        return {"l1": loss.detach()}

    @torch.no_grad()
    def super_resolve(self, lr, kernel=None, noise_level=None):
        return self.module("net")(F.interpolate(lr, scale_factor=self.cfg.data.scale))

    def degrade_for_validation(self, hr, index):
        return {"lr": F.avg_pool2d(hr, self.cfg.data.scale)}


def toy_config(**sections):
    """A resolved Config for the toy method (overrides as nested dicts per section)."""
    cfg = config_lib.merge(config_lib.DEFAULTS, {
        "method": "toy", "preset": "test", "device": "cpu",
        "data": {"scale": 2, "hr_patch": 16},
        "train": {"iters": 4, "batch_size": 2, "lr": 1e-2, "val_every": 2, "save_every": 1, "log_every": 1},
        "toy": {}})
    return config_lib.Config(config_lib.merge(cfg, sections))
