"""Training datasets keyed by (image index, sample seed), and the seeded sampler that feeds them.

Every random choice of a training sample (which image, crop position, augmentation, and
the degradation a method synthesises from `batch["seed"]`) is a function of the run seed
and the sample's global number n = (step * world_size + rank) * batch_size + j. So the
data stream does not depend on DataLoader workers or on the global RNG: resuming at step
t restarts it exactly, and 2 DDP processes with batch B see the same samples as one
process with batch 2B.
"""
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .cache import MappedImage
from .io import read_uint8, list_images, to_tensor
from .transforms import augment, check_size, random_crop


def sample_seed(seed, n):
    """A 63-bit seed for global sample number n of a run seeded with `seed`."""
    return int(np.random.SeedSequence([seed, n]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class SeededSampler(Sampler):
    """Infinite stream of (image index, sample seed) keys starting at `start_step`.
    Images are visited in a new seeded permutation every pass over the set."""

    def __init__(self, num_images, batch_size, seed, start_step=0, rank=0, world_size=1):
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self._order = (None, None)  # (pass, its permutation): drawn once per pass

    def key(self, n):
        epoch, position = divmod(n, self.num_images)
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_images))
        return int(self._order[1][position]), sample_seed(self.seed, n)

    def __iter__(self):
        step = self.start_step
        while True:
            first = (step * self.world_size + self.rank) * self.batch_size
            for n in range(first, first + self.batch_size):
                yield self.key(n)
            step += 1


class ImageSet:
    """Named (H, W, 3) uint8 images: files decoded on access, prepared entries memory-mapped on access
    (cache.MappedImage), or in-memory arrays."""

    def __init__(self, items):
        self.items = list(items)  # (name, path, MappedImage or array)
        if not self.items:
            raise ValueError("an image set needs at least one image")

    @classmethod
    def from_folder(cls, folder):
        return cls((path, path) for path in list_images(folder))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        name, source = self.items[index]
        if isinstance(source, str):
            return name, read_uint8(source)
        return name, source.pixels() if isinstance(source, MappedImage) else source

    def check(self, min_size):
        """Read every image once: an unreadable or too small one fails now, naming its file."""
        for index in range(len(self)):
            name, image = self[index]
            check_size(image, min_size, min_size, name)


class HRCrops(Dataset):
    """HR patches (P x P, P = data.hr_patch) for methods that synthesise their own LR."""

    def __init__(self, images, patch, scale):
        if patch % scale:
            raise ValueError(f"data.hr_patch ({patch}) must be a multiple of data.scale ({scale})")
        self.images, self.patch, self.scale = images, patch, scale
        images.check(patch)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        index, seed = key
        rng = np.random.default_rng(seed)
        name, image = self.images[index]
        check_size(image, self.patch, self.patch, name)
        hr = augment(random_crop(image, self.patch, rng, align=self.scale), int(rng.integers(8)))
        return {"hr": to_tensor(hr), "seed": seed}


class UnpairedCrops(Dataset):
    """An HR patch and an LR patch (P/s) of unrelated images: the sample's image index picks
    the HR image; the LR image is drawn from the sample seed. `augment_hr=False` leaves the HR
    patch unflipped (for a method that flips its own pairs after degrading them)."""

    def __init__(self, hr_images, lr_images, patch, scale, augment_hr=True):
        if patch % scale:
            raise ValueError(f"data.hr_patch ({patch}) must be a multiple of data.scale ({scale})")
        self.hr, self.lr, self.patch, self.scale = hr_images, lr_images, patch, scale
        self.augment_hr = augment_hr
        hr_images.check(patch)
        lr_images.check(patch // scale)

    def __len__(self):
        return len(self.hr)

    def __getitem__(self, key):
        index, seed = key
        rng = np.random.default_rng(seed)
        hr_name, hr = self.hr[index]
        lr_name, lr = self.lr[int(rng.integers(len(self.lr)))]
        check_size(hr, self.patch, self.patch, hr_name)
        check_size(lr, self.patch // self.scale, self.patch // self.scale, lr_name)
        hr, hr_mode = random_crop(hr, self.patch, rng), int(rng.integers(8))
        hr = augment(hr, hr_mode) if self.augment_hr else hr
        lr = augment(random_crop(lr, self.patch // self.scale, rng), int(rng.integers(8)))
        return {"hr": to_tensor(hr), "lr": to_tensor(lr), "seed": seed}


def collate_seeds(samples):
    """Default collation, with the seeds kept as an int64 tensor."""
    batch = torch.utils.data.default_collate([{k: v for k, v in s.items() if k != "seed"} for s in samples])
    batch["seed"] = torch.tensor([s["seed"] for s in samples], dtype=torch.int64)
    return batch
