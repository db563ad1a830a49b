"""The prepared form of an image folder: each image decoded once, into a .npy file of the (H, W, 3)
uint8 RGB array read_uint8 returns, which training crops read by slicing a memory map.

Layout: <cache>/<folder name>-<hash of the folder's absolute path>/<file name>.<size>-<mtime_ns>.npy.
An entry is keyed by its source's (path, size, mtime_ns): a changed source gets a new entry, and
preparing the folder again deletes the entries of sources that changed or went. Each entry is
written to a temporary file and renamed, so a reader never sees half of one, and builders sharing a
cache (one per machine, on a shared file system) cannot corrupt each other's entries.
"""
import hashlib
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..io import load_untrusted
from .io import ImageError, list_images, read_uint8

OFF = "none"  # data.cache: none decodes the source file of every crop


def default_root():
    """$XDG_CACHE_HOME/bsr/prepared (default ~/.cache/bsr/prepared)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "bsr", "prepared")


def cache_root(setting):
    """The folder of the prepared forms for data.cache = `setting`: unset -> default_root(); "none" -> None."""
    if setting == OFF:
        return None
    return os.path.abspath(os.path.expanduser(setting)) if setting else default_root()


def usable_cpus():
    """The CPUs this process may run on (its affinity mask where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def entry_path(root, source):
    """The prepared entry of the image file `source`, named by its (path, size, mtime_ns)."""
    folder = os.path.dirname(os.path.abspath(source))
    digest = hashlib.sha256(folder.encode()).hexdigest()[:12]
    stat = os.stat(source)
    name = f"{os.path.basename(source)}.{stat.st_size}-{stat.st_mtime_ns}.npy"
    return os.path.join(root, f"{os.path.basename(folder)}-{digest}", name)


class MappedImage:
    """A prepared entry's pixels, memory-mapped on first access. It pickles as its path: a DataLoader
    worker started by spawn maps the file itself instead of receiving a copy of the pixels."""

    def __init__(self, path, source):
        self.path, self.source, self._pixels = path, source, None

    def pixels(self):
        """The (H, W, 3) uint8 read-only memory map; ImageError naming the entry and its source if unusable."""
        if self._pixels is None:
            self._pixels = map_entry(self.path, self.source)
        return self._pixels

    def __getstate__(self):
        return {**self.__dict__, "_pixels": None}


def map_entry(path, source):
    try:
        pixels = load_untrusted(path, "prepared image", mmap=True)
    except (OSError, ValueError) as error:
        raise ImageError(f"the prepared form of image {source!r} is unusable ({error}); delete {path!r} and "
                         f"prepare the folder again") from None
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ImageError(f"the prepared form of image {source!r}, {path!r}, holds a {pixels.dtype} array of shape "
                         f"{pixels.shape}, not (H, W, 3) uint8; delete it and prepare the folder again")
    return np.asarray(pixels)  # a plain array over the map: slicing it skips np.memmap's Python hooks


def is_usable(path):
    try:
        map_entry(path, path)
    except ImageError:
        return False
    return True


def write_entry(source, path):
    """Decode `source` (ImageError naming it when unreadable) and write its entry `path` atomically."""
    pixels = read_uint8(source)
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            np.save(out, pixels)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def say(line):
    print(line, flush=True)


def prepare(folder, root, threads=None, log=say):
    """Prepare every image of `folder` without a usable entry under `root` (decoded by `threads`
    threads, default usable_cpus()), delete the entries no current source has; returns the entries
    (list_images order). An unreadable image is an ImageError naming it."""
    sources = list_images(folder)
    entries = [entry_path(root, source) for source in sources]
    missing = [(s, e) for s, e in zip(sources, entries) if not is_usable(e)]
    where = os.path.dirname(entries[0])
    if missing:
        os.makedirs(where, exist_ok=True)
        log(f"preparing {len(missing)} of {len(sources)} images of {folder} in {where} (decoded once, "
            f"then read by memory map)")
        start = time.perf_counter()
        pool = ThreadPoolExecutor(threads or usable_cpus())
        try:
            for _ in pool.map(write_entry, *zip(*missing)):
                pass
        finally:
            pool.shutdown(cancel_futures=True)
        log(f"prepared {len(missing)} images in {time.perf_counter() - start:.1f} s")
    current = {os.path.basename(e) for e in entries}
    for name in os.listdir(where):
        if name.endswith(".npy") and name not in current:
            os.remove(os.path.join(where, name))
    return entries


def open_prepared(folder, root):
    """[(source path, MappedImage)] of the images of `folder`, from the entries prepare() wrote;
    ImageError naming the first image without one."""
    items = []
    for source in list_images(folder):
        path = entry_path(root, source)
        if not os.path.exists(path):
            raise ImageError(f"image {source!r} has no prepared form {path!r} (the process preparing the folder "
                             f"failed, or the image changed since): run python -m bsr.prepare cache {folder}")
        items.append((source, MappedImage(path, source)))
    return items


def prepared_items(folder, root, builder=True, barrier=None, log=say):
    """open_prepared after the folder is prepared: by this process when `builder`, while the others wait
    at `barrier()` (under torchrun: local rank 0 of each machine builds, every process waits). The
    builder's error is raised after the barrier, so no process waits for ever; the others then find
    the entries missing and say so."""
    error = None
    if builder:
        try:
            prepare(folder, root, log=log)
        except Exception as caught:  # re-raised below, after the other processes were released
            error = caught
    if barrier is not None:
        barrier()
    if error is not None:
        raise error
    return open_prepared(folder, root)
