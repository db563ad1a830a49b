"""KernelGAN's training on one image: the schedule, G and D with their optimisers, estimate_kernel."""
import numpy as np
import torch
from tqdm import tqdm

from .arch import KernelDiscriminator, KernelGenerator, init_weights
from .crops import CROP, crop_centres, crop_corner, prepare_image
from .losses import LAMBDAS, bicubic_loss, boundary_mask, constraint_losses
from .postprocess import final_kernels


class Schedule:
    """KernelGAN's `Learner`: learning-rate decay and the constraint weights over the iterations."""

    def __init__(self):
        self.below_count = 0
        self.similar_to_bicubic = False
        self.constraints_added = False

    def update(self, iteration, loss_bicubic, lambdas, optimizers):
        if iteration == 0:
            return
        if iteration % 750 == 0:
            for group in (g for opt in optimizers for g in opt.param_groups):
                group["lr"] /= 10
        if not self.similar_to_bicubic:
            self.similar_to_bicubic = loss_bicubic < 0.4 and self.below_count >= 2
            self.below_count = self.below_count + 1 if loss_bicubic < 0.4 else 0
        elif iteration % 200 == 0 and lambdas["bicubic"] > 5e-6:
            lambdas["bicubic"] = max(lambdas["bicubic"] / 100, 5e-6)
            if not self.constraints_added and lambdas["bicubic"] < 5e-3:
                lambdas.update(centralized=1.0, sparse=5.0)
                self.constraints_added = True


class KernelGAN:
    """One image's G, D, optimisers, constraint weights and schedule."""

    def __init__(self, channels=64, device="cpu", grouped_bicubic_loss=False):
        self.G = KernelGenerator(channels).to(device)
        self.D = KernelDiscriminator(channels).to(device)
        init_weights(self.G)
        init_weights(self.D)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.lambdas = dict(LAMBDAS)
        self.schedule = Schedule()
        self.mask = boundary_mask(self.G.kernel_size).float().to(device)
        self.grouped = grouped_bicubic_loss
        self.d_crop = self.G.output_size(CROP)

    def train_step(self, g_input, d_input):
        """One G update then one D update; returns the losses (floats)."""
        self.opt_g.zero_grad()
        g_output = self.G(g_input)
        d_fake = self.D(g_output)
        losses = {"gan": (d_fake - 1).abs().mean(), "bicubic": bicubic_loss(g_input, g_output, self.grouped),
                  **constraint_losses(self.G.kernel(), self.mask)}
        sum(self.lambdas.get(name, 1.0) * value for name, value in losses.items()).backward()
        self.opt_g.step()

        self.opt_d.zero_grad()
        with torch.no_grad():
            fake = self.G(g_input)
        fake = fake + torch.randn_like(fake) / 255
        d_loss = ((self.D(fake) - 0).abs().mean() + (self.D(d_input) - 1).abs().mean()) / 2
        d_loss.backward()
        self.opt_d.step()
        return {name: value.item() for name, value in {**losses, "d": d_loss}.items()}


def _to_tensor(crop, device):
    return torch.from_numpy(crop * 2 - 1).permute(2, 0, 1)[None].float().to(device)


def estimate_kernel(image, iterations=3000, real_image=False, channels=64, seed=0, device="cpu",
                    grouped_bicubic_loss=False, n_filtering=40, progress=False):
    """(x2 kernel, x4 kernel) float64 arrays (correlation orientation; 17x17 and 33x33 once G has centred its
    kernel) of an (H, W, 3) image in [0, 1]."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"kernelgan: image must be (H, W, 3), got shape {image.shape}")
    if iterations < 1:
        raise ValueError(f"kernelgan: iterations must be >= 1, got {iterations}")
    image = prepare_image(np.asarray(image, dtype=np.float64), real_image)
    rng = np.random.default_rng(seed)
    # seeded init and D noise without moving the caller's RNG (a training run building its kernel pool;
    # on a GPU, that device's RNG too); float32 with autograd also when called under no_grad / autocast
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad(), \
            torch.autocast(device.type, enabled=False):
        torch.manual_seed(seed)
        gan = KernelGAN(channels, device, grouped_bicubic_loss)
        g_centres, d_centres = crop_centres(image, gan.d_crop, iterations, rng)
        _train(gan, image, g_centres, d_centres, rng, device, progress)
    with torch.no_grad():
        return final_kernels(gan.G.kernel(), n_filtering)


def _train(gan, image, g_centres, d_centres, rng, device, progress):
    """One G and one D update per pre-drawn pair of crops, then the schedule."""
    for it in tqdm(range(len(g_centres)), disable=not progress, ncols=60):
        top, left = crop_corner(g_centres[it], CROP, image.shape)
        g_input = image[top:top + CROP, left:left + CROP]
        top, left = crop_corner(d_centres[it], gan.d_crop, image.shape)
        d_input = image[top:top + gan.d_crop, left:left + gan.d_crop] + rng.standard_normal((gan.d_crop,) * 2 + (3,)) / 255
        losses = gan.train_step(_to_tensor(g_input, device), _to_tensor(d_input, device))
        gan.schedule.update(it, losses["bicubic"], gan.lambdas, (gan.opt_g, gan.opt_d))
