"""NTIRE 2018's best_psnr (bsr.metrics.best_psnr): the best PSNR of the SR's centre window over
displaced HR windows, against a direct loop over the shifts; and PDM's pdm.best_psnr option that
reports it in validation (the 2018 tracks' official metric)."""
import pytest
import torch

from bsr import config, metrics, validation
from bsr.methods import get


def best_psnr_loop(sr, hr, border, shift, window):
    """One image: crop, centre window of sr, every displaced window of hr, max PSNR (float64)."""
    sr, hr = (x[0].double()[:, border:x.shape[-2] - border, border:x.shape[-1] - border] for x in (sr, hr))
    top, left = sr.shape[1] // 2 - window // 2, sr.shape[2] // 2 - window // 2
    centre = sr[:, top:top + window, left:left + window]
    scores = []
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            moved = hr[:, top + dy:top + dy + window, left + dx:left + dx + window]
            scores.append(10 * torch.log10(1 / (centre - moved).pow(2).mean()))
    return max(scores)


def test_best_psnr_matches_a_loop_over_shifts():
    generator = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 30, 34, generator=generator)
    sr = (hr + 0.1 * torch.randn(hr.shape, generator=generator)).clamp(0, 1)
    got = metrics.best_psnr(sr, hr, border=2, shift=3, window=8)
    assert got.shape == (2,) and got.dtype == torch.float64
    for i in range(2):
        assert torch.allclose(got[i], best_psnr_loop(sr[i:i + 1], hr[i:i + 1], 2, 3, 8))


def test_best_psnr_finds_the_displacement():
    hr = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    sr = torch.roll(hr, (2, -3), (-2, -1)) + 0.01
    aligned = metrics.psnr(torch.full((1, 3, 1, 1), 0.01), torch.zeros(1, 3, 1, 1))
    assert torch.allclose(metrics.best_psnr(sr, hr, shift=4, window=16), aligned)
    assert metrics.psnr(sr, hr) < aligned - 10
    with pytest.raises(ValueError, match="at least 24 pixels on each side"):
        metrics.best_psnr(sr, hr, border=10, shift=4, window=16)


def test_pdm_reports_best_psnr_when_asked():
    tiny = ["pdm.kernel={nc: 3, nf: 8, nb: 1, ksize: 7}", "pdm.noise={nf: 8, nb: 1}", "pdm.sr={nf: 8, nb: 1}",
            "pdm.d_lr={nf: 8, nb: 2}"]
    item = {"name": "x", "hr": torch.rand(1, 3, 168, 168), "lr": torch.rand(1, 3, 42, 42)}
    method = get("pdm")(config.load("pdm", "demo", overrides=[*tiny, "pdm.best_psnr=true"]), "cpu")
    rows, mean = validation.run_validation(method, [item])
    sr = metrics.quantize_8bit(method.super_resolve(item["lr"]).clamp(0, 1))
    assert rows[0]["best_psnr"] == pytest.approx(float(metrics.best_psnr(sr, item["hr"], 4 + 10)))
    assert "best_psnr" in mean
    assert get("pdm")(config.load("pdm", "demo", overrides=tiny), "cpu").extra_metrics(sr, item["hr"], 4) == {}
