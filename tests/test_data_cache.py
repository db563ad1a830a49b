"""bsr.data.cache: the prepared form of training folders (decoded once, read by memory map), the build
under torchrun (one builder, the others wait), and the DataLoader's worker count (data.num_workers)."""
import os
import pickle

import cv2
import numpy as np
import pytest
import torch

from bsr import config, data
from bsr.data import cache, datasets, loader
from bsr.data.io import ImageError, write_uint8


def image_folder(folder, sizes=((40, 52), (36, 48), (48, 40))):
    """PNGs of random pixels, one as a JPEG, one as a 16-bit grey PNG (read_uint8's conversions)."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    for index, (h, w) in enumerate(sizes):
        write_uint8(os.path.join(folder, f"{index}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    write_uint8(os.path.join(folder, "photo.jpg"), rng.integers(0, 256, (44, 44, 3), dtype=np.uint8))
    cv2.imwrite(os.path.join(folder, "grey16.png"), rng.integers(0, 65536, (40, 40), dtype=np.uint16))
    return str(folder)


def prepared_set(folder, root):
    return datasets.ImageSet(cache.prepared_items(folder, root, log=lambda line: None))


def samples(dataset, count=24, seed=5):
    stream = iter(datasets.SeededSampler(len(dataset), 4, seed, start_step=3))
    return [dataset[next(stream)] for _ in range(count)]


def assert_same_samples(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and x["seed"] == y["seed"]
        for key in x.keys() - {"seed"}:
            assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), key


def test_prepared_hr_crops_equal_the_decoded_ones(tmp_path):
    folder = image_folder(tmp_path / "hr")
    decoded = datasets.HRCrops(datasets.ImageSet.from_folder(folder), 16, 4)
    prepared = datasets.HRCrops(prepared_set(folder, str(tmp_path / "cache")), 16, 4)
    assert [name for name, _ in prepared.images.items] == [name for name, _ in decoded.images.items]
    assert_same_samples(samples(prepared), samples(decoded))


@pytest.mark.parametrize("augment_hr", [True, False])
def test_prepared_unpaired_crops_equal_the_decoded_ones(tmp_path, augment_hr):
    hr, lr = image_folder(tmp_path / "hr"), image_folder(tmp_path / "lr", sizes=((12, 16), (20, 9)))
    root = str(tmp_path / "cache")
    decoded = datasets.UnpairedCrops(datasets.ImageSet.from_folder(hr), datasets.ImageSet.from_folder(lr), 32, 4,
                                     augment_hr)
    prepared = datasets.UnpairedCrops(prepared_set(hr, root), prepared_set(lr, root), 32, 4, augment_hr)
    assert_same_samples(samples(prepared), samples(decoded))


def test_train_dataset_reads_the_prepared_form_unless_data_cache_is_none(tmp_path):
    hr, lr = image_folder(tmp_path / "hr"), image_folder(tmp_path / "lr", sizes=((12, 16),))
    batches = {}
    for setting in (str(tmp_path / "cache"), "none"):
        cfg = config.load("pdm", "smoke", overrides=[f"data.hr={hr}", f"data.lr={lr}", f"data.cache={setting}"])
        dataset = data.train_dataset(cfg, "unpaired")
        kinds = {type(source) for set_ in (dataset.hr, dataset.lr) for _, source in set_.items}
        assert kinds == ({cache.MappedImage} if setting != "none" else {str})
        batches[setting] = next(iter(data.train_loader(dataset, 3, cfg.seed, 0, start_step=2)))
    prepared, decoded = batches.values()
    assert all(torch.equal(prepared[key], decoded[key]) for key in ("hr", "lr", "seed"))


def test_a_worker_process_gets_the_same_batches(tmp_path):
    """Workers map the entries themselves: a pickled set carries paths, not pixels."""
    images = prepared_set(image_folder(tmp_path / "hr"), str(tmp_path / "cache"))
    dataset = datasets.HRCrops(images, 16, 4)
    assert len(pickle.dumps(images)) < 2000
    assert np.array_equal(pickle.loads(pickle.dumps(images))[1][1], images[1][1])
    main, workers = (next(iter(data.train_loader(dataset, 4, 7, n, start_step=1))) for n in (0, 1))
    assert torch.equal(main["hr"], workers["hr"]) and torch.equal(main["seed"], workers["seed"])


def test_an_entry_is_keyed_by_size_and_mtime_and_a_changed_source_is_rebuilt(tmp_path):
    folder, root = image_folder(tmp_path / "hr"), str(tmp_path / "cache")
    source = os.path.join(folder, "0.png")
    first = cache.prepare(folder, root, log=lambda line: None)
    assert len(first) == 5 and first[0] == cache.entry_path(root, source) and all(map(os.path.exists, first))
    write_uint8(source, np.full((40, 52, 3), 7, np.uint8))
    os.utime(source, ns=(os.stat(source).st_atime_ns, os.stat(source).st_mtime_ns + 10**9))
    second = cache.prepare(folder, root, log=lambda line: None)
    assert second[0] == cache.entry_path(root, source) != first[0] and second[1:] == first[1:]
    assert sorted(os.listdir(os.path.dirname(second[0]))) == sorted(os.path.basename(e) for e in second)  # old one gone
    assert (prepared_set(folder, root)[0][1] == 7).all()


def test_an_unchanged_folder_is_not_decoded_again_and_a_damaged_entry_is_rebuilt(tmp_path, monkeypatch):
    folder, root = image_folder(tmp_path / "hr"), str(tmp_path / "cache")
    entries = cache.prepare(folder, root, log=lambda line: None)
    decoded = []
    monkeypatch.setattr(cache, "read_uint8", lambda path: decoded.append(path) or data.read_uint8(path))
    cache.prepare(folder, root, log=lambda line: None)
    assert decoded == []
    with open(entries[2], "r+b") as entry:
        entry.truncate(100)  # a header without its pixels
    with pytest.raises(ImageError, match=r"prepared form of image .*2.png.* is unusable"):
        cache.MappedImage(entries[2], os.path.join(folder, "2.png")).pixels()
    cache.prepare(folder, root, log=lambda line: None)
    assert decoded == [os.path.join(folder, "2.png")]
    assert np.array_equal(prepared_set(folder, root)[2][1], data.read_uint8(decoded[0]))


def test_an_unreadable_image_fails_the_build_naming_its_file(tmp_path):
    folder = image_folder(tmp_path / "hr")
    (tmp_path / "hr" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    with pytest.raises(ImageError, match="broken.png"):
        cache.prepare(folder, str(tmp_path / "cache"), threads=2, log=lambda line: None)
    entries = os.listdir(os.path.dirname(cache.entry_path(str(tmp_path / "cache"), str(tmp_path / "hr" / "0.png"))))
    assert not [name for name in entries if "broken" in name or name.endswith(".tmp")]


def test_a_too_small_image_names_its_file_from_the_prepared_shapes(tmp_path):
    folder = image_folder(tmp_path / "hr")
    images = prepared_set(folder, str(tmp_path / "cache"))
    with pytest.raises(ImageError, match=r"1.png' is 36x48, smaller than the 40x40"):
        datasets.HRCrops(images, 40, 4)


def test_the_builder_prepares_while_the_others_wait_at_the_barrier(tmp_path):
    folder, root = image_folder(tmp_path / "hr"), str(tmp_path / "cache")
    seen = []

    def other_rank_builds():  # the barrier returns once the builder is done
        seen.append(os.path.exists(root))
        cache.prepare(folder, root, log=lambda line: None)

    items = cache.prepared_items(folder, root, builder=False, barrier=other_rank_builds)
    assert seen == [False]  # this process built nothing before the barrier
    assert np.array_equal(items[0][1].pixels(), data.read_uint8(os.path.join(folder, "0.png")))


def test_a_failed_build_reaches_the_barrier_and_every_process_fails(tmp_path):
    folder, root = image_folder(tmp_path / "hr"), str(tmp_path / "cache")
    (tmp_path / "hr" / "broken.png").write_bytes(b"not an image")
    barriers = []
    with pytest.raises(ImageError, match="broken.png"):
        cache.prepared_items(folder, root, builder=True, barrier=lambda: barriers.append(1), log=lambda line: None)
    assert barriers == [1]  # the waiting processes were released
    with pytest.raises(ImageError, match=r"has no prepared form.*python -m bsr.prepare cache"):
        cache.prepared_items(folder, root, builder=False, barrier=lambda: None)


def test_under_torchrun_only_local_rank_0_builds(tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "hr")
    cfg = config.load("usrnet", "smoke", overrides=[f"data.hr={folder}", f"data.cache={tmp_path / 'cache'}"])
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ImageError, match="has no prepared form"):
        data.folder_images(cfg, folder)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert len(data.folder_images(cfg, folder)) == 5


def test_cache_location(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "default_root", lambda: "DEFAULT")
    assert cache.cache_root(None) == "DEFAULT" and cache.cache_root("none") is None
    assert cache.cache_root(str(tmp_path / "c")) == str(tmp_path / "c")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache.cache_root("~/c") == str(tmp_path / "c")


def test_the_default_location_is_the_user_cache_folder(monkeypatch):
    monkeypatch.undo()  # tests/conftest.py points it to a temporary folder
    monkeypatch.setenv("XDG_CACHE_HOME", "/x")
    assert cache.default_root() == "/x/bsr/prepared"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert cache.default_root() == "/home/u/.cache/bsr/prepared"


@pytest.mark.parametrize("cpus, processes, expected", [(2, 1, 2), (16, 1, 8), (16, 4, 4), (6, 4, 1), (2, 4, 0)])
def test_auto_workers_share_the_cpus_of_the_processes_on_this_machine(monkeypatch, cpus, processes, expected):
    assert loader.resolve_workers("auto", processes, cpus) == expected
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    monkeypatch.setattr(loader, "usable_cpus", lambda: cpus)
    assert loader.resolve_workers("auto") == expected
    assert loader.resolve_workers(3) == 3 and loader.resolve_workers(0) == 0


def test_num_workers_config_accepts_a_number_or_auto():
    assert config.load("usrnet", "paper").data.num_workers == "auto"
    assert config.load("usrnet", "demo").data.num_workers == 0
    assert config.load("usrnet", "paper", overrides=["data.num_workers=3"]).data.num_workers == 3
    assert config.load("usrnet", "demo", overrides=["data.num_workers=auto"]).data.num_workers == "auto"
    with pytest.raises(config.ConfigError, match=r"'data.num_workers'.*a whole number or auto, got 'many'"):
        config.load("usrnet", "demo", overrides=["data.num_workers=many"])


def test_the_loader_pins_memory_for_cuda_and_keeps_batches_ready_per_worker():
    dataset = datasets.HRCrops(datasets.ImageSet([("a", np.zeros((16, 16, 3), np.uint8))]), 8, 2)
    ready = data.train_loader(dataset, 2, 0, 2, pin_memory=True)
    assert (ready.num_workers, ready.prefetch_factor, ready.pin_memory, ready.persistent_workers) == (
        2, loader.PREFETCH_BATCHES, True, True)
    assert data.train_loader(dataset, 2, 0, 0).num_workers == 0


def test_the_sampler_keys_do_not_depend_on_the_order_they_are_asked_in():
    sampler = datasets.SeededSampler(7, 3, seed=2)
    order = [20, 3, 15, 0, 6, 7, 30, 1]
    assert [sampler.key(n) for n in order] == [datasets.SeededSampler(7, 3, seed=2).key(n) for n in order]
