"""The op demo (python -m bsr.demo): lens-blur kernels and the written panel."""
import cv2
import torch

from bsr import demo


def test_lens_blur_kernels_are_normalised_and_widen_toward_corners():
    kernels = demo.lens_blur_kernels(9, 11, 21)
    assert kernels.shape == (1, 441, 9, 11)
    torch.testing.assert_close(kernels.sum(1), torch.ones(1, 9, 11))
    taps = torch.arange(21.0) - 10
    dy, dx = taps.view(21, 1).expand(21, 21).reshape(-1), taps.view(1, 21).expand(21, 21).reshape(-1)
    spread = (kernels[0] * (dy**2 + dx**2).view(-1, 1, 1)).sum(0)
    assert spread[0, 0] > 4 * spread[4, 5] and spread[8, 10] > 4 * spread[4, 5]


def test_demo_writes_panel(tmp_path):
    path = demo.main(["--out", str(tmp_path), "--image", "coffee", "--scale", "4", "--ksize", "13"])
    panel = cv2.imread(path)
    assert panel.shape == (400, 600 + 400 + 600, 3)  # coffee is 400 x 600: HR | square kernel grid | LR upscaled
