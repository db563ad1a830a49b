"""bsr.kernels: random kernels checked by their moments, seeding and symmetries."""
import pytest
import torch

from bsr import kernels as kern


def generator(seed=0):
    return torch.Generator().manual_seed(seed)



def moments(kernels):
    """Mean (row, column) and covariance [[xx, xy], [xy, yy]] (x = column) of (N, k, k) kernels."""
    grid = torch.arange(kernels.shape[-1], dtype=torch.float64)
    row = (kernels.sum(2) * grid).sum(1)
    col = (kernels.sum(1) * grid).sum(1)
    y, x = grid.view(1, -1, 1) - row.view(-1, 1, 1), grid.view(1, 1, -1) - col.view(-1, 1, 1)
    cov = [[(kernels * a * b).sum((1, 2)) for b in (x, y)] for a in (x, y)]
    return row, col, torch.stack([torch.stack(r, -1) for r in cov], -2)


def assert_normalised(kernels, n, size):
    assert kernels.shape == (n, size, size) and kernels.dtype == torch.float64
    assert (kernels >= 0).all()
    assert (kernels.sum((1, 2)) - 1).abs().max() < 1e-12


def test_gaussian_kernels_have_the_requested_mean_and_covariance():
    cov = kern.covariance(torch.tensor([1.2, 2.0]), torch.tensor([2.0, 1.1]), torch.tensor([0.4, -1.0]))
    kernels = kern.gaussian_kernels(cov, 25, centre=torch.tensor([12.0, 10.5]))
    assert_normalised(kernels, 2, 25)
    row, col, measured = moments(kernels)
    assert torch.allclose(row, torch.tensor([12.0, 10.5], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(col, row, atol=1e-6)
    assert (measured - cov).abs().max() < 1e-5


@pytest.mark.parametrize("size,sigma", [(21, 1.5), (20, 1.5), (11, 1.0)])
def test_isotropic_kernels_follow_dans_grid(size, sigma):
    kernels = kern.isotropic_gaussian_kernels([sigma, 0.5], size)
    assert_normalised(kernels, 2, size)
    centre = (size - 1) // 2  # DAN arange(-l//2 + 1, l//2 + 1): 10 for 21, 9 for 20
    assert kernels[0].argmax().item() == centre * size + centre
    _, _, cov = moments(kernels)
    assert abs(cov[0, 0, 0].item() / sigma**2 - 1) < 1e-3 and abs(cov[0, 0, 1].item()) < 1e-12  # 5 sigma truncation at 11


def test_dan_random_kernels_settings():
    iso = kern.dan_random_kernels(6, 21, (1.0, 1.5), rate_iso=1.0, generator=generator())
    assert_normalised(iso, 6, 21)
    _, _, cov = moments(iso)
    sigma2 = cov[:, 0, 0]
    assert ((sigma2 > 1.0 - 1e-6) & (sigma2 < 1.5**2 + 1e-6)).all() and sigma2.std() > 0.01
    assert torch.allclose(iso, iso.transpose(1, 2))
    aniso = kern.dan_random_kernels(6, 21, (1.0, 1.5), rate_iso=0.0, generator=generator())
    assert not torch.allclose(aniso, aniso.transpose(1, 2))
    disturbed = kern.dan_random_kernels(6, 21, (1.0, 1.5), rate_iso=0.0, disturb=True, generator=generator())
    assert_normalised(disturbed, 6, 21)
    ratio = disturbed / aniso  # 1 + U(0, 0.25) per tap, renormalised
    assert (ratio.amax((1, 2)) / ratio.amin((1, 2)) < 1.25 + 1e-9).all() and (ratio.std((1, 2)) > 0.01).all()
    assert kern.dan_random_kernels(0, generator=generator()).shape == (0, 21, 21)


def test_dan_sigma_ranges():
    assert kern.dan_sigma_range(3) == (0.2, 4.0)
    assert kern.dan_sigma_range(2, paper=True) == (0.2, 2.0)
    assert kern.dan_sigma_range(4, setting=2) == (0.6, 5.0)
    with pytest.raises(ValueError, match="setting"):
        kern.dan_sigma_range(4, setting=3)


def test_usrnet_gaussian_kernels_are_shifted_by_the_inner_scale():
    kernels = kern.usrnet_gaussian_kernels(40, variance_range=(0.6, 1.0), generator=generator())
    assert_normalised(kernels, 40, 25)
    row, col, cov = moments(kernels)
    shifts = 12 - row  # (sf - 1) / 2 for sf in {1, 2, 3, 4}
    assert torch.allclose(row, col, atol=1e-6)
    assert torch.allclose(shifts * 2, (shifts * 2).round(), atol=1e-6) and set((shifts * 2).round().tolist()) == {0, 1, 2, 3}
    eigenvalues = torch.linalg.eigvalsh(cov)
    assert (eigenvalues > 0.6 - 1e-6).all() and (eigenvalues < 1.0 + 1e-6).all()


@pytest.mark.parametrize("make", [kern.motion_kernels, kern.usrnet_random_kernels,
                                  lambda n, generator: kern.dan_random_kernels(n, 15, rate_iso=0.0, disturb=True, generator=generator),
                                  lambda n, generator: kern.usrnet_gaussian_kernels(n, 25, generator=generator)])
def test_random_kernels_are_seeded_and_normalised(make):
    first, again, other = make(5, generator=generator(3)), make(5, generator=generator(3)), make(5, generator=generator(4))
    assert_normalised(first, 5, first.shape[-1])
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first[0], first[1])


def test_motion_kernels_are_sparse_trajectories():
    kernels = kern.motion_kernels(6, generator=generator(1))
    assert_normalised(kernels, 6, 25)
    support = (kernels > 1e-3).sum((1, 2))
    assert (support < 25 * 25 / 2).all(), support
    _, _, cov = moments(kernels)
    eigenvalues = torch.linalg.eigvalsh(cov)
    assert (eigenvalues[:, 1] / eigenvalues[:, 0]).max() > 2  # some are elongated, unlike a Gaussian disc


def test_augment_kernels_are_dihedral_transforms():
    kernels = kern.usrnet_gaussian_kernels(8, generator=generator())
    augmented = kern.augment_kernels(kernels, generator())
    for k, a in zip(kernels, augmented):
        assert any(torch.equal(a, torch.rot90(k, r, (0, 1)).flip(1) if flip else torch.rot90(k, r, (0, 1)))
                   for r in range(4) for flip in (False, True))
