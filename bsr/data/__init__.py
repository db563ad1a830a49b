"""Image-folder datasets, crops/augmentation, the embedded demo set, validation items.

Config keys: data.hr (HR folder; unset = embedded demo photos), data.lr (target-domain LR
folder for unpaired methods), data.val (validation folder: HR images, or hr/ + lr/
sub-folders for paired LR, matched by name: data.val_lr_name), data.scale, data.hr_patch,
data.num_workers (a number, or auto: loader.resolve_workers), data.cache (where the training folders'
prepared form goes: cache.py; none: decode every crop's file).
"""
import os

import torch.distributed as dist

from . import cache, demo_set
from .datasets import HRCrops, ImageSet, SeededSampler, UnpairedCrops, collate_seeds
from .io import ImageError, list_images, read_image, read_uint8, to_tensor, write_image
from .loader import resolve_workers, train_loader
from .transforms import check_size, modcrop


def train_dataset(cfg, data_kind, augment_hr=True):
    """The training Dataset of a method (`data_kind` "hr" or "unpaired", see methods/base.py);
    `augment_hr=False`: unpaired HR crops without the random flip/rotation."""
    d = cfg.data
    if data_kind == "hr":
        images = folder_images(cfg, d.hr) if d.hr else demo_set.image_set(demo_set.TRAIN)
        return HRCrops(images, d.hr_patch, d.scale)
    if d.hr and not d.lr:
        raise ValueError(f"method {cfg.method} trains on unpaired data: set data.lr to a folder of LR images")
    hr = folder_images(cfg, d.hr) if d.hr else demo_set.image_set(demo_set.UNPAIRED_HR)
    return UnpairedCrops(hr, lr_images(cfg), d.hr_patch, d.scale, augment_hr)


def lr_images(cfg):
    """The target-domain LR images of an unpaired method: data.lr, or the embedded demo's."""
    return folder_images(cfg, cfg.data.lr) if cfg.data.lr else demo_set.unpaired_lr_set(cfg.data.scale)


def folder_images(cfg, folder):
    """The ImageSet of a training folder: its prepared form under data.cache (prepared first where
    missing: under torchrun by local rank 0 of each machine while every process waits), or with
    data.cache none its files, decoded on every access."""
    root = cache.cache_root(cfg.data.get("cache"))
    if root is None:
        return ImageSet.from_folder(folder)
    builder = int(os.environ.get("LOCAL_RANK", "0")) == 0
    barrier = dist.barrier if dist.is_available() and dist.is_initialized() else None
    return ImageSet(cache.prepared_items(folder, root, builder, barrier))


def validation_source(cfg, folder=None):
    """Which validation images validation_items uses, in words (the engine prints it)."""
    folder = folder or cfg.data.get("val")
    if folder and is_paired_folder(folder):
        return f"{folder}: hr/ and lr/ pairs matched by name (LR name {cfg.data.val_lr_name!r})"
    if folder:
        return f"{folder}: HR images degraded by the method's validation protocol"
    note = " (data.val is not set: set it to a folder of your own)" if cfg.data.get("hr") else ""
    return f"the embedded demo photos {', '.join(demo_set.VALIDATION)}{note}"


def is_paired_folder(folder):
    return os.path.isdir(os.path.join(folder, "hr")) and os.path.isdir(os.path.join(folder, "lr"))


def paired_files(folder, lr_name="{}"):
    """[(hr path, lr path)] of folder/hr and folder/lr matched by file stem: the LR of HR `stem` is
    named lr_name.format(stem) (BasicSR's filename_tmpl, e.g. "{}x4"), any image extension. An HR
    without its LR, or an LR without its HR, is an ImageError naming the file."""
    hr_files, lr_files = list_images(os.path.join(folder, "hr")), list_images(os.path.join(folder, "lr"))
    lr_by_stem = {}
    for path in lr_files:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in lr_by_stem:
            raise ImageError(f"two LR images named {stem!r}: {lr_by_stem[stem]!r} and {path!r}")
        lr_by_stem[stem] = path
    pairs = []
    for path in hr_files:
        wanted = lr_name.format(os.path.splitext(os.path.basename(path))[0])
        if wanted not in lr_by_stem:
            raise ImageError(f"HR image {path!r} has no LR image named {wanted!r}.* in {os.path.join(folder, 'lr')!r} "
                             f"(LR names follow data.val_lr_name = {lr_name!r})")
        pairs.append((path, lr_by_stem.pop(wanted)))
    if lr_by_stem:
        raise ImageError(f"LR image {next(iter(lr_by_stem.values()))!r} has no HR image in "
                         f"{os.path.join(folder, 'hr')!r} (LR names follow data.val_lr_name = {lr_name!r})")
    return pairs


def read_validation_hr(path, multiple, min_size):
    """(1, 3, H, W) of an HR validation file cropped to multiples of `multiple`; an image smaller than
    `min_size` (what the method's protocol needs) is an ImageError naming the file."""
    image = read_uint8(path)
    check_size(image, min_size, min_size, path, "the method's validation protocol")
    return to_tensor(modcrop(image, multiple))[None]


def read_pair(hr_path, lr_path, scale, min_size):
    hr = read_validation_hr(hr_path, scale, min_size)
    lr = read_image(lr_path)[None]
    if tuple(lr.shape[-2:]) != (hr.shape[-2] // scale, hr.shape[-1] // scale):
        raise ImageError(f"LR image {lr_path!r} is {lr.shape[-2]}x{lr.shape[-1]}; its HR {hr_path!r} cropped to a "
                         f"multiple of {scale} is {hr.shape[-2]}x{hr.shape[-1]}, so x{scale} needs "
                         f"{hr.shape[-2] // scale}x{hr.shape[-1] // scale}")
    return {"name": os.path.basename(hr_path), "hr": hr, "lr": lr}


def validation_items(cfg, method, folder=None):
    """Validation items {"name", "hr", "lr", optionally "kernel", "noise_level", "scale"}
    (tensors (1, 3, H, W)) from `folder` (or data.val, or the embedded demo images).
    HR images are cropped to multiples of `method.modcrop_multiple()`; a method with
    data_kind "hr" degrades each one with `degrade_for_validation` (one or several LRs)."""
    folder = folder or cfg.data.get("val")
    scale, multiple, min_size = cfg.data.scale, method.modcrop_multiple(), method.min_validation_size()
    if folder and is_paired_folder(folder):
        return [read_pair(h, l, scale, min_size) for h, l in paired_files(folder, cfg.data.val_lr_name)]
    if folder:
        hrs = [(os.path.basename(p), read_validation_hr(p, multiple, min_size)) for p in list_images(folder)]
    elif method.data_kind == "hr":
        hrs = [(n, to_tensor(modcrop(demo_set.load(n), multiple))[None]) for n in demo_set.VALIDATION]
    else:
        return demo_set.unpaired_validation(scale, multiple)
    items = []
    for index, (name, hr) in enumerate(hrs):
        if method.data_kind == "hr":
            degraded = method.degrade_for_validation(hr, index)
        else:
            degraded = demo_set.degrade_for_validation(hr, scale, index)
        many = isinstance(degraded, (list, tuple))
        for j, entry in enumerate(degraded if many else [degraded]):
            entry = dict(entry)
            suffix = entry.pop("tag", j if many else None)  # an entry may name itself by "tag"
            stem = os.path.splitext(name)[0]
            items.append({"name": f"{stem}_{suffix}" if suffix is not None else stem, "hr": hr, **entry})
    return items


__all__ = ["HRCrops", "ImageError", "ImageSet", "SeededSampler", "UnpairedCrops", "cache", "collate_seeds", "demo_set",
           "folder_images", "list_images", "lr_images", "paired_files", "read_image", "read_uint8", "resolve_workers",
           "train_dataset", "train_loader", "validation_items", "validation_source", "write_image"]
