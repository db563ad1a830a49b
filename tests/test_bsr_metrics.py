"""bsr.metrics against scikit-image (an independent implementation of the same formulas) and known values."""
import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from bsr import metrics


def pair(n=2, h=37, w=30):
    hr = torch.rand(n, 3, h, w, dtype=torch.float64)
    sr = (hr + 0.08 * torch.randn_like(hr)).clamp(0, 1)
    return sr, hr


def skimage_metrics(sr, hr, border, y_channel):
    """Per image (PSNR, SSIM) from skimage on HWC numpy arrays."""
    results = []
    for a, b in zip(sr.numpy().transpose(0, 2, 3, 1), hr.numpy().transpose(0, 2, 3, 1)):
        if y_channel:
            a, b = rgb2ycbcr(a)[..., :1] / 255, rgb2ycbcr(b)[..., :1] / 255
        if border:
            a, b = a[border:-border, border:-border], b[border:-border, border:-border]
        value_psnr = peak_signal_noise_ratio(b, a, data_range=1.0)
        value_ssim = structural_similarity(a, b, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False)
        results.append((value_psnr, value_ssim))
    return np.array(results)


def test_y_channel_is_basicsrs_bt601_studio_range():
    rgb = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.2, 0.5, 0.9]], dtype=torch.float64)
    y = metrics.rgb_to_y(rgb.T.reshape(1, 3, 1, 4)).flatten()
    expected = torch.tensor([16, 235, 16 + 65.481, 16 + 0.2 * 65.481 + 0.5 * 128.553 + 0.9 * 24.966], dtype=torch.float64) / 255
    assert (y - expected).abs().max() < 1e-12
    assert np.abs(y.numpy() - rgb2ycbcr(rgb.numpy()[None])[0, :, 0] / 255).max() < 1e-12


@pytest.mark.parametrize("border,y_channel", [(0, False), (4, False), (0, True), (3, True)])
def test_psnr_and_ssim_match_skimage(border, y_channel):
    sr, hr = pair()
    expected = skimage_metrics(sr, hr, border, y_channel)
    assert np.abs(metrics.psnr(sr, hr, border, y_channel).numpy() - expected[:, 0]).max() < 1e-10
    assert np.abs(metrics.ssim(sr, hr, border, y_channel).numpy() - expected[:, 1]).max() < 1e-10


def test_known_values():
    hr = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 0.8
    assert torch.allclose(metrics.psnr(hr + 0.1, hr), torch.full((2,), 20.0, dtype=torch.float64))
    assert torch.isinf(metrics.psnr(hr, hr)).all()
    assert torch.allclose(metrics.ssim(hr, hr), torch.ones(2, dtype=torch.float64))
    assert (metrics.ssim(hr, torch.rand_like(hr)) < 0.2).all()


def test_low_precision_inputs_are_measured_in_float64():
    sr, hr = pair(1, 24, 24)
    sr16, hr16 = sr.half(), hr.half()
    assert metrics.psnr(sr16, hr16, y_channel=True).dtype == torch.float64
    assert torch.equal(metrics.psnr(sr16, hr16, y_channel=True), metrics.psnr(sr16.double(), hr16.double(), y_channel=True))
    assert torch.equal(metrics.quantize_8bit(torch.tensor([-0.1, 0.5, 1.2])), torch.tensor([0.0, 128 / 255, 1.0]))


def test_image_metrics_keys_and_errors():
    sr, hr = pair(1, 24, 20)
    result = metrics.image_metrics(sr, hr, border=2)
    assert sorted(result) == ["psnr_rgb", "psnr_y", "ssim_rgb", "ssim_y"]
    assert result["psnr_y"].item() == metrics.psnr(sr, hr, 2, y_channel=True).item()
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(sr, hr[..., :-1])
    with pytest.raises(ValueError, match="leaves nothing"):
        metrics.psnr(sr, hr, border=10)
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(sr, hr, border=5)
    with pytest.raises(ValueError, match=r"RGB \(N, 3, H, W\)"):
        metrics.psnr(sr[:, :1], hr[:, :1], y_channel=True)


def test_kernel_error():
    target = torch.rand(2, 9, 9, dtype=torch.float64)
    assert torch.allclose(metrics.kernel_error(3 * target, target), torch.zeros(2, dtype=torch.float64))
    delta3, delta7 = torch.zeros(3, 3), torch.zeros(7, 7)
    delta3[1, 1], delta7[3, 3] = 1, 1
    assert metrics.kernel_error(delta3, delta7).item() == 0  # centred padding aligns the sizes
    shifted = torch.roll(torch.nn.functional.pad(delta3, (2, 2, 2, 2)), 1, 1)
    assert metrics.kernel_error(shifted, delta7).item() == 2  # disjoint supports
    assert metrics.kernel_error(shifted, delta7, max_shift=1).item() == 0
    assert metrics.kernel_error(target, target.flip(1)).shape == (2,)
    with pytest.raises(ValueError, match="same N"):
        metrics.kernel_error(target, target[:1])
