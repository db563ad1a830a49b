"""bsr.data: image I/O errors, aligned crops, 8-way augmentation, the seeded sample stream,
the embedded demo set."""
import numpy as np
import pytest
import torch

from bsr import data
from bsr.data import datasets, demo_set, transforms
from bsr.data.io import ImageError


def test_corrupted_image_error_names_the_file(tmp_path):
    data.write_image(str(tmp_path / "good.png"), torch.rand(3, 40, 40))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ImageError, match="broken.png"):
        datasets.HRCrops(datasets.ImageSet.from_folder(str(tmp_path)), 16, 2)


def test_too_small_image_error_names_the_file(tmp_path):
    data.write_image(str(tmp_path / "tiny.png"), torch.rand(3, 12, 40))
    with pytest.raises(ImageError, match=r"tiny.png.*12x40.*16x16"):
        datasets.HRCrops(datasets.ImageSet.from_folder(str(tmp_path)), 16, 2)


def test_empty_folder_and_bad_patch_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        data.list_images(str(tmp_path))
    with pytest.raises(ValueError, match="multiple of data.scale"):
        datasets.HRCrops(datasets.ImageSet([("a", np.zeros((20, 20, 3), np.uint8))]), 15, 2)


def test_io_round_trip_grey_and_alpha(tmp_path):
    import cv2

    image = torch.rand(3, 9, 7)
    data.write_image(str(tmp_path / "x.png"), image)
    assert torch.allclose(data.read_image(str(tmp_path / "x.png")), image, atol=0.5 / 255 + 1e-6)
    cv2.imwrite(str(tmp_path / "g.png"), np.full((5, 6), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "a.png"), np.full((5, 6, 4), 100, np.uint8))
    assert data.read_uint8(str(tmp_path / "g.png")).shape == (5, 6, 3)
    assert (data.read_uint8(str(tmp_path / "a.png")) == 100).all()


def test_random_crop_is_aligned_to_the_scale():
    image = np.arange(37 * 41).reshape(37, 41, 1)
    rng = np.random.default_rng(0)
    for _ in range(20):
        crop = transforms.random_crop(image, 12, rng, align=4)
        top, left = divmod(int(crop[0, 0, 0]), 41)
        assert crop.shape == (12, 12, 1) and top % 4 == 0 and left % 4 == 0


def test_augment_gives_the_eight_dihedral_transforms():
    image = np.arange(12).reshape(3, 4, 1)
    outputs = {transforms.augment(image, m).tobytes() + bytes(transforms.augment(image, m).shape) for m in range(8)}
    assert len(outputs) == 8
    assert np.array_equal(transforms.augment(image, 0), image)


@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_augment_is_numpys_rotation_then_row_flip_of_a_view(dtype):
    """The crops are views of a larger, read-only image (a prepared image's memory map)."""
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3)).astype(dtype)
    image.flags.writeable = False
    crop = image[3:20, 5:29]
    for mode in range(8):
        expected = np.rot90(crop, mode % 4)
        expected = expected[::-1] if mode >= 4 else expected
        out = transforms.augment(crop, mode)
        assert out.flags.c_contiguous and out.dtype == dtype and np.array_equal(out, expected), mode
    assert transforms.augment(crop[..., :1], 1).shape == (24, 17, 1)


def test_sampler_ranks_together_equal_one_process_with_their_total_batch():
    def keys(sampler, count):
        stream = iter(sampler)
        return [next(stream) for _ in range(count)]

    single = keys(datasets.SeededSampler(5, 4, seed=3, start_step=1), 8)  # steps 1 and 2, batch 4
    rank0 = keys(datasets.SeededSampler(5, 2, seed=3, start_step=1, rank=0, world_size=2), 4)
    rank1 = keys(datasets.SeededSampler(5, 2, seed=3, start_step=1, rank=1, world_size=2), 4)
    assert single == rank0[:2] + rank1[:2] + rank0[2:] + rank1[2:]
    assert keys(datasets.SeededSampler(5, 4, seed=3, start_step=2), 4) == single[4:]  # resume mid-stream
    assert sorted(k[0] for k in keys(datasets.SeededSampler(5, 5, seed=3), 5)) == [0, 1, 2, 3, 4]  # one pass = a permutation


def test_crops_are_a_function_of_the_key():
    images = datasets.ImageSet([("a", np.random.default_rng(0).integers(0, 255, (30, 30, 3), dtype=np.uint8))])
    crops = datasets.HRCrops(images, 8, 2)
    assert torch.equal(crops[(0, 123)]["hr"], crops[(0, 123)]["hr"])
    assert not torch.equal(crops[(0, 123)]["hr"], crops[(0, 124)]["hr"])
    batch = datasets.collate_seeds([crops[(0, 1)], crops[(0, 2)]])
    assert batch["hr"].shape == (2, 3, 8, 8) and batch["seed"].tolist() == [1, 2]


def test_demo_set_split_and_unpaired_degradation():
    assert set(demo_set.TRAIN).isdisjoint(demo_set.VALIDATION)
    assert set(demo_set.UNPAIRED_HR) | set(demo_set.UNPAIRED_LR) == set(demo_set.TRAIN)
    assert demo_set.load("retina").shape == (512, 512, 3) and demo_set.load("stereo_motorcycle").ndim == 3
    hr = torch.rand(3, 32, 24)
    lr = demo_set.demo_degrade(hr, 4, 0)
    assert lr.shape == (3, 8, 6) and torch.equal(lr, demo_set.demo_degrade(hr, 4, 0))
    assert torch.equal(lr, (lr * 255).round() / 255)  # 8-bit
    kernel = demo_set.demo_kernel(4)
    assert kernel.shape == (21, 21) and abs(kernel.sum().item() - 1) < 1e-6


def test_unpaired_validation_items_carry_the_true_kernel():
    items = demo_set.unpaired_validation(scale=4, multiple=4)
    assert [i["name"] for i in items] == ["chelsea", "retina"]
    for item in items:
        assert item["lr"].shape[-2:] == tuple(s // 4 for s in item["hr"].shape[-2:])
        assert torch.equal(item["kernel"], demo_set.demo_kernel(4))


@pytest.mark.parametrize("progressive", [0, 1])
def test_a_truncated_jpeg_is_an_error_naming_the_file(tmp_path, progressive):
    """libjpeg decodes a cut-off file with only a warning (the missing rows grey); read_uint8 refuses it."""
    import cv2

    image = cv2.resize(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8), (128, 128))
    cv2.imwrite(str(tmp_path / "full.jpg"), image, [cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])
    raw = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(raw[:len(raw) * 3 // 4])
    (tmp_path / "trailer.jpg").write_bytes(raw + b"data after the end-of-image marker")
    assert data.read_uint8(str(tmp_path / "trailer.jpg")).shape == (128, 128, 3)
    with pytest.raises(ImageError, match="cut.jpg.*truncated"):
        data.read_uint8(str(tmp_path / "cut.jpg"))
    (tmp_path / "full.jpg").unlink()
    with pytest.raises(ImageError, match="cut.jpg"):  # the training data path
        datasets.HRCrops(datasets.ImageSet.from_folder(str(tmp_path)), 16, 2)
