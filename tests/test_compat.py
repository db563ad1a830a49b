"""bsrops.compat: each object against a float64 implementation of its original's documented semantics written
here (reflect-padded correlations tap by tap, the data step as one small linear system per LR frequency), values
and gradients, odd and even kernels where the original takes them, under torch.autocast (bfloat16 on the CPU)
with the result dtypes of the originals; a toy model of each codebase's structure calling the object with its
original signature, so that adopting it is one line; clear errors for bad input."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bsrops.compat import basicsr, dan, kair, unpairedsr
from reference_modules import DPCGReference
from test_precision import BF16, assert_float32_rounded_to_bfloat16, autocast, check_policy
from tolerances import assert_close_to_float64

F64 = torch.float64


def grads_of(fn, leaves, module=None, seed=1):
    """[output, gradients of the leaves, then of the module's parameters] of fn(*leaves) against a random
    output gradient drawn from `seed`."""
    leaves = [t.detach().requires_grad_() for t in leaves]
    out = fn(*leaves)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(out.dtype)
    params = [] if module is None else list(module.parameters())
    return [out.detach(), *torch.autograd.grad(out, leaves + params, grad_out, materialize_grads=True)]


def assert_all_close_to_float64(actual, expected):
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype
        if a.is_complex():
            a, e = torch.view_as_real(a), torch.view_as_real(e)
        assert_close_to_float64(a, e)


# ---- the blurs: reflect-padded correlation, one tap at a time ----

def correlate(x, taps, stride=1, before=None):
    """out[n, c, i, j] = sum_{p,q} taps[n, p, q, i, j] x[n, c, s*i + p - before, s*j + q - before], x read with
    numpy's reflect padding (the edge pixel not repeated); taps (N or 1, k, k, Ho or 1, Wo or 1), before = k // 2
    unless given."""
    k = taps.shape[1]
    before = k // 2 if before is None else before
    height, width = x.shape[2:]
    out_h, out_w = -(-height // stride), -(-width // stride)
    rows = torch.from_numpy(np.pad(np.arange(height), (before, k - 1 - before), mode="reflect"))
    cols = torch.from_numpy(np.pad(np.arange(width), (before, k - 1 - before), mode="reflect"))
    padded = x[:, :, rows][:, :, :, cols]
    out = 0
    for p in range(k):
        for q in range(k):
            window = padded[:, :, p:p + stride * (out_h - 1) + 1:stride, q:q + stride * (out_w - 1) + 1:stride]
            out = out + taps[:, None, p, q] * window
    return out


def per_image_taps(kernel):
    """(k, k) or (N, k, k) -> (1 or N, k, k, 1, 1)."""
    return kernel.reshape(-1, *kernel.shape[-2:], 1, 1)


def rounded_once(fn):
    """fn computed in float32 on bfloat16 inputs and rounded once to bfloat16: a convolution under autocast."""
    return lambda *ts: fn(*[t.float() for t in ts]).to(BF16)


# ---- DAN's BatchBlur ----

@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("size", [5, 6])
def test_batch_blur_values_and_gradients(size, shared):
    """DAN's padding split for even l: l // 2 pixels before, l // 2 - 1 after."""
    x = torch.randn(3, 2, 11, 9, dtype=F64)
    kernel = torch.rand((size, size) if shared else (3, size, size), dtype=F64)
    actual = grads_of(dan.BatchBlur(size), [x, kernel])
    expected = grads_of(lambda a, b: correlate(a, per_image_taps(b)), [x, kernel])
    assert_all_close_to_float64(actual, expected)


def test_batch_blur_under_autocast_runs_in_bfloat16():
    x, kernel = torch.randn(2, 3, 10, 9), torch.rand(2, 6, 6)
    exact = lambda a, b: correlate(a, per_image_taps(b))  # noqa: E731
    check_policy(dan.BatchBlur(6), exact, rounded_once(exact), [x, kernel], [torch.randn(2, 3, 10, 9)], BF16)


class ToyDegradation(nn.Module):
    """DAN's SRMD preprocessing at toy size: HR blurred by per-image kernels through self.blur, then decimated."""

    def __init__(self, blur, scale=2):
        super().__init__()
        self.blur, self.scale = blur, scale

    def forward(self, hr, kernels):
        return self.blur(hr, kernels)[..., ::self.scale, ::self.scale]


class CorrelationBatchBlur(nn.Module):
    def forward(self, input, kernel):  # noqa: A002
        return correlate(input, per_image_taps(kernel))


def test_batch_blur_swaps_in_one_line():
    model = ToyDegradation(CorrelationBatchBlur())
    hr, kernels = torch.randn(2, 3, 12, 12, dtype=F64), torch.rand(2, 4, 4, dtype=F64)
    expected = grads_of(model, [hr, kernels])
    model.blur = dan.BatchBlur(4)
    assert_all_close_to_float64(grads_of(model, [hr, kernels]), expected)


# ---- DANv2's DPCG ----

class ToyRestorer(nn.Module):
    """DANv2's Restorer structure at toy size: groups of DPCG called with the [features, code] list."""

    def __init__(self, group, nf=6, nb=2, ng=2):
        super().__init__()
        self.head1, self.head2 = nn.Conv2d(3, nf, 3, padding=1), nn.Conv2d(4, nf, 1)
        self.body = nn.Sequential(*[group(nf, nf, 3, 1, nb) for _ in range(ng)])
        self.tail = nn.Conv2d(nf, 3, 3, padding=1)

    def forward(self, lr, code):
        features, _ = self.body([self.head1(lr), self.head2(code[:, :, None, None])])
        return self.tail(features)


def test_dpcg_swaps_in_one_line():
    """The official group's structure (tests/reference_modules.py), its state dict and its list interface."""
    official = ToyRestorer(DPCGReference).double()
    ours = ToyRestorer(dan.DPCG).double()
    ours.load_state_dict(official.state_dict())
    lr, code = torch.randn(2, 3, 7, 6, dtype=F64), torch.randn(2, 4, dtype=F64)
    assert_all_close_to_float64(grads_of(ours, [lr, code], ours), grads_of(official, [lr, code], official))


def test_dpcg_updates_and_returns_the_list_it_is_given():
    official, ours = DPCGReference(4, 4, 3, 3, 2).double(), dan.DPCG(4, 4, 3, 3, 2).double()
    ours.load_state_dict(official.state_dict())
    img, cond = torch.randn(2, 4, 5, 5, dtype=F64), torch.randn(2, 4, 5, 5, dtype=F64)
    given, expected = [img, cond], official([img, cond])
    assert ours(given) is given
    assert_all_close_to_float64(given, expected)


def test_dpcg_under_autocast_runs_in_bfloat16():
    """DANv2 under autocast hands the groups its head convolutions' bfloat16 features and code."""
    official, ours = DPCGReference(4, 4, 3, 1, 2), dan.DPCG(4, 4, 3, 1, 2)
    ours.load_state_dict(official.state_dict())
    exact = DPCGReference(4, 4, 3, 1, 2).double()
    exact.load_state_dict({k: v.to(BF16) for k, v in official.state_dict().items()})
    in_bf16 = DPCGReference(4, 4, 3, 1, 2).to(BF16)
    in_bf16.load_state_dict(official.state_dict())
    img, cond = torch.randn(2, 4, 6, 5).to(BF16), torch.randn(2, 4, 1, 1).to(BF16)
    check_policy(lambda a, b: ours([a, b]), lambda a, b: exact([a, b]), lambda a, b: in_bf16([a, b]), [img, cond],
                 [torch.randn(2, 4, 6, 5), torch.randn(2, 4, 1, 1)], BF16)


# ---- BasicSR's filter2D ----

@pytest.mark.parametrize("batch_kernel", [3, 1])
def test_filter2d_values_and_gradients(batch_kernel):
    x, kernel = torch.randn(3, 2, 10, 13, dtype=F64), torch.rand(batch_kernel, 7, 7, dtype=F64)
    actual = grads_of(basicsr.filter2D, [x, kernel])
    assert_all_close_to_float64(actual, grads_of(lambda a, b: correlate(a, per_image_taps(b)), [x, kernel]))


def test_filter2d_under_autocast_runs_in_bfloat16():
    x, kernel = torch.randn(2, 3, 9, 9), torch.rand(1, 5, 5)
    exact = lambda a, b: correlate(a, per_image_taps(b))  # noqa: E731
    check_policy(basicsr.filter2D, exact, rounded_once(exact), [x, kernel], [torch.randn(2, 3, 9, 9)], BF16)


def real_esrgan_blurs(img, kernel1, kernel2, sinc_kernel, filter2D):  # noqa: N803
    """The blur calls of Real-ESRGAN's degradation: per-image kernels, a resize, a shared sinc kernel."""
    out = F.interpolate(filter2D(img, kernel1), scale_factor=0.5, mode="area")
    return filter2D(filter2D(out, kernel2), sinc_kernel)


def test_filter2d_swaps_in_one_line():
    def correlation_filter2d(img, kernel):
        return correlate(img, per_image_taps(kernel))

    inputs = [torch.randn(2, 3, 16, 16, dtype=F64), torch.rand(2, 5, 5, dtype=F64), torch.rand(2, 3, 3, dtype=F64),
              torch.rand(1, 5, 5, dtype=F64)]
    expected = grads_of(lambda *ts: real_esrgan_blurs(*ts, correlation_filter2d), inputs)
    actual = grads_of(lambda *ts: real_esrgan_blurs(*ts, basicsr.filter2D), inputs)
    assert_all_close_to_float64(actual, expected)


# ---- PDM-SR's KernelModel blur ----

def kernel_model_taps(kernel):
    """(B, k*k, h, w) softmax output -> (B, k, k, h, w) taps."""
    k = int(round(kernel.shape[1] ** 0.5))
    return kernel.reshape(kernel.shape[0], k, k, *kernel.shape[2:])


@pytest.mark.parametrize("scale,kernel_hw", [(3, (1, 1)), (3, (4, 5)), (1, (12, 15)), (1, (1, 1))])
def test_pdm_blur_values_and_gradients(scale, kernel_hw):
    """Per image (B, k*k, 1, 1) and per pixel, at the LR size for scale > 1 and the HR size for scale 1."""
    x, kernel = torch.randn(2, 3, 12, 15, dtype=F64), torch.rand(2, 25, *kernel_hw, dtype=F64)
    actual = grads_of(lambda a, b: unpairedsr.blur(a, b, scale), [x, kernel])
    expected = grads_of(lambda a, b: correlate(a, kernel_model_taps(b), scale), [x, kernel])
    assert_all_close_to_float64(actual, expected)
    viewed = unpairedsr.blur(x, kernel.view(2, 1, 25, *kernel_hw), scale)  # KernelModel's view of the kernel
    assert torch.equal(viewed, actual[0])


def test_pdm_blur_under_autocast_promotes_as_pdm():
    """An autocast softmax gives a bfloat16 kernel; with a float32 x, PDM's multiply promotes to float32."""
    x, kernel = torch.randn(2, 3, 8, 8), torch.softmax(torch.randn(2, 9, 4, 4), 1).to(BF16)
    with autocast():
        out, grad_x, grad_kernel = grads_of(lambda a, b: unpairedsr.blur(a, b, 2), [x, kernel])
    assert (out.dtype, grad_x.dtype, grad_kernel.dtype) == (torch.float32, torch.float32, BF16)
    truth = grads_of(lambda a, b: correlate(a, kernel_model_taps(b), 2), [x.double(), kernel.double()])
    assert_close_to_float64(out, truth[0])
    assert_close_to_float64(grad_x, truth[1])
    assert_float32_rounded_to_bfloat16(grad_kernel, truth[2])


class ToyKernelModel(nn.Module):
    """PDM-SR's KernelModel structure at toy size: a network's softmax gives k*k taps per image (from noise) or
    per LR pixel (from the image, through a stride-s convolution), then the blur and decimation."""

    def __init__(self, blur, scale=2, k=5, spatial=False):
        super().__init__()
        self.blur, self.scale, self.spatial = blur, scale, spatial
        self.net = nn.Conv2d(3, k * k, scale if spatial else 1, stride=scale if spatial else 1)

    def forward(self, x, noise):
        kernel = torch.softmax(self.net(x if self.spatial else noise), 1)
        return self.blur(x, kernel, self.scale)


@pytest.mark.parametrize("spatial", [False, True])
def test_pdm_blur_swaps_in_one_line(spatial):
    model = ToyKernelModel(lambda x, kernel, scale: correlate(x, kernel_model_taps(kernel), scale),
                           spatial=spatial).double()
    x, noise = torch.randn(2, 3, 10, 10, dtype=F64), torch.randn(2, 3, 1, 1, dtype=F64)
    expected = grads_of(model, [x, noise], model)
    model.blur = unpairedsr.blur
    assert_all_close_to_float64(grads_of(model, [x, noise], model), expected)


# ---- KAIR's DataNet: the data step as a linear system per LR frequency ----

def spectra(y, kernel, sf):
    """What USRNet.forward gives DataNet: FB (the kernel's transfer function, its centre pixel (kh // 2, kw // 2)
    at the origin), FBC = conj(FB), F2B = |FB|^2, FBFy = FBC * fft2(y with zeros inserted); kernel (N, 1 or C,
    kh, kw)."""
    n, c, h, w = y.shape
    padded = kernel.new_zeros(*kernel.shape[:2], h * sf, w * sf)
    padded[..., :kernel.shape[2], :kernel.shape[3]] = kernel
    fb = torch.fft.fft2(torch.roll(padded, (-(kernel.shape[2] // 2), -(kernel.shape[3] // 2)), dims=(2, 3)))
    upsampled = y.new_zeros(n, c, h * sf, w * sf)
    upsampled[..., ::sf, ::sf] = y
    return fb, torch.conj(fb), fb.abs() ** 2, torch.conj(fb) * torch.fft.fft2(upsampled)


def alias_solve(x, fb, fbfy, alpha, sf):
    """argmin_X ||y - A X||^2 + alpha ||X - x||^2 in the Fourier domain: decimation by sf folds the sf*sf aliases j
    of each LR frequency onto one another, so F(A^T A X)_j = conj(FB_j) mean_j'(FB_j' F(X)_j'); per LR frequency
    and channel the (sf^2 x sf^2) system (conj(FB) FB^T / sf^2 + alpha I) F(X) = FBFy + alpha F(x), solved
    densely."""
    n, c, height, width = x.shape
    h, w = height // sf, width // sf

    def aliases(t):  # (N, C', H, W) -> (N, C', h, w, sf*sf): alias (a, b) of (u, v) is (a*h + u, b*w + v)
        return t.reshape(*t.shape[:2], sf, h, sf, w).permute(0, 1, 3, 5, 2, 4).reshape(*t.shape[:2], h, w, sf * sf)

    a = alpha.reshape(n, 1, 1, 1, 1)
    fb_j = aliases(fb)
    system = fb_j.conj()[..., :, None] * fb_j[..., None, :] / sf ** 2 + a[..., None] * torch.eye(sf * sf)
    fx = torch.linalg.solve(system, (aliases(fbfy) + a * aliases(torch.fft.fft2(x)))[..., None])[..., 0]
    fx = fx.reshape(n, c, h, w, sf, sf).permute(0, 1, 4, 2, 5, 3).reshape(n, c, height, width)
    return torch.fft.ifft2(fx).real


def data_net_inputs(kernel_channels=1, kernel_size=(5, 4), sf=2, n=2, c=3, h=4, w=3):
    y = torch.randn(n, c, h, w, dtype=F64)
    kernel = torch.rand(n, kernel_channels, *kernel_size, dtype=F64)
    x = torch.randn(n, c, h * sf, w * sf, dtype=F64)
    return x, kernel, y, torch.rand(n, 1, 1, 1, dtype=F64) + 0.05


@pytest.mark.parametrize("kernel_channels,kernel_size,sf", [(1, (5, 4), 2), (1, (3, 3), 3), (3, (4, 4), 2)])
def test_data_net_values_and_gradients(kernel_channels, kernel_size, sf):
    """Gradients for x, alpha, FB (its use as FBC and through F2B included) and FBFy."""
    x, kernel, y, alpha = data_net_inputs(kernel_channels, kernel_size, sf)
    fb, _, _, fbfy = spectra(y, kernel, sf)

    def ours(x, alpha, fb, fbfy):
        return kair.DataNet()(x, fb, fb.conj(), fb.abs() ** 2, fbfy, alpha, sf)

    actual = grads_of(ours, [x, alpha, fb, fbfy])
    expected = grads_of(lambda x, alpha, fb, fbfy: alias_solve(x, fb, fbfy, alpha, sf), [x, alpha, fb, fbfy])
    assert_all_close_to_float64(actual, expected)


def test_data_net_takes_network_usrnet_real_views():
    """network_usrnet.py (torch < 1.8) passes real views (..., 2); its F2B has a zero imaginary part."""
    x, kernel, y, alpha = data_net_inputs()
    fb, fbc, f2b, fbfy = spectra(y, kernel, 2)
    expected = kair.DataNet()(x, fb, fbc, f2b, fbfy, alpha, 2)
    views = [torch.view_as_real(t.resolve_conj()) for t in (fb, fbc)]
    actual = kair.DataNet()(x, *views, torch.stack([f2b, torch.zeros_like(f2b)], -1), torch.view_as_real(fbfy),
                            alpha, 2)
    assert torch.equal(actual, expected)


def test_data_net_under_autocast_returns_float32():
    """USRNet under autocast hands DataNet its prior's bfloat16 output; DataNet's FFTs run in float32."""
    x, kernel, y, alpha = data_net_inputs()
    fb, fbc, f2b, fbfy = (t.to(torch.complex64) if t.is_complex() else t.float() for t in spectra(y, kernel, 2))
    with autocast():
        out, grad_x, grad_alpha = grads_of(lambda a, b: kair.DataNet()(a, fb, fbc, f2b, fbfy, b, 2),
                                           [x.to(BF16), alpha.float()])
    assert (out.dtype, grad_x.dtype, grad_alpha.dtype) == (torch.float32, BF16, torch.float32)
    truth = grads_of(lambda a, b: alias_solve(a, fb.to(torch.complex128), fbfy.to(torch.complex128), b, 2),
                     [x.to(BF16).double(), alpha.float().double()])
    assert_close_to_float64(out, truth[0])
    assert_float32_rounded_to_bfloat16(grad_x, truth[1])
    assert_close_to_float64(grad_alpha, truth[2])


class ToyUSRNet(nn.Module):
    """KAIR's USRNet structure at toy size: the spectra once, then K data steps through self.d with DataNet's
    signature, a one-convolution prior after each, alphas and betas from a hyper-network."""

    def __init__(self, data_module, iterations=2):
        super().__init__()
        self.d, self.n = data_module, iterations
        self.p = nn.Conv2d(4, 3, 3, padding=1)
        self.h = nn.Sequential(nn.Conv2d(2, 2 * iterations, 1), nn.Softplus())

    def forward(self, y, kernel, sf, sigma):
        fb, fbc, f2b, fbfy = spectra(y, kernel, sf)
        x = F.interpolate(y, scale_factor=sf, mode="nearest")
        ab = self.h(torch.cat((sigma, torch.full_like(sigma, sf)), dim=1)) + 1e-6
        for i in range(self.n):
            x = self.d(x, fb, fbc, f2b, fbfy, ab[:, i:i + 1], sf)
            x = self.p(torch.cat((x, ab[:, self.n + i:self.n + i + 1].expand(-1, 1, *x.shape[2:])), dim=1))
        return x


class AliasSolveDataNet(nn.Module):
    def forward(self, x, FB, FBC, F2B, FBFy, alpha, sf):  # noqa: N803
        return alias_solve(x, FB, FBFy, alpha, sf)


def test_data_net_swaps_in_one_line():
    model = ToyUSRNet(AliasSolveDataNet()).double()
    _, kernel, y, _ = data_net_inputs(h=4, w=4)
    sigma = torch.rand(2, 1, 1, 1, dtype=F64) * 0.1
    expected = grads_of(lambda a, b: model(a, b, 2, sigma), [y, kernel], model)
    model.d = kair.DataNet()
    assert_all_close_to_float64(grads_of(lambda a, b: model(a, b, 2, sigma), [y, kernel], model), expected)


# ---- bad input ----

def _data_net_call(**change):
    x, kernel, y, alpha = data_net_inputs()
    fb, fbc, f2b, fbfy = spectra(y, kernel, 2)
    args = dict(x=x, FB=fb, FBC=fbc, F2B=f2b, FBFy=fbfy, alpha=alpha, sf=2)
    args.update({name: value(args) for name, value in change.items()})
    return lambda: kair.DataNet()(**args)


BAD_CALLS = {
    "batch blur kernel size": (lambda: dan.BatchBlur(5)(torch.randn(2, 3, 8, 8), torch.rand(2, 4, 4)), ValueError,
                               "kernel must be (B, l, l) = (2, 5, 5)"),
    "batch blur 2-D kernel": (lambda: dan.BatchBlur(5)(torch.randn(2, 3, 8, 8), torch.rand(4, 4)), ValueError,
                              "(l, l) = (5, 5)"),
    "batch blur input": (lambda: dan.BatchBlur(5)(torch.randn(3, 8, 8), torch.rand(5, 5)), ValueError,
                         "BatchBlur: input must have 4 dimensions"),
    "filter2D even kernel": (lambda: basicsr.filter2D(torch.randn(2, 3, 8, 8), torch.rand(2, 4, 4)), ValueError,
                             "kernel size must be odd"),
    "filter2D kernel batch": (lambda: basicsr.filter2D(torch.randn(2, 3, 8, 8), torch.rand(3, 5, 5)), ValueError,
                              "(b, k, k) with b = 2"),
    "filter2D img": (lambda: basicsr.filter2D(np.zeros((2, 3, 8, 8)), torch.rand(1, 5, 5)), TypeError,
                     "filter2D: img must be a torch.Tensor"),
    "pdm blur scale": (lambda: unpairedsr.blur(torch.randn(2, 3, 9, 8), torch.rand(2, 9, 1, 1), 2), ValueError,
                       "scale must be an int >= 1 dividing"),
    "pdm blur kernel shape": (lambda: unpairedsr.blur(torch.randn(2, 3, 8, 8), torch.rand(2, 9, 8, 8), 2),
                              ValueError, "(B, k*k, H/s, W/s) = (2, k*k, 4, 4)"),
    "pdm blur even k": (lambda: unpairedsr.blur(torch.randn(2, 3, 8, 8), torch.rand(2, 16, 1, 1), 2), ValueError,
                        "k must be odd"),
    "data net sf": (_data_net_call(sf=lambda a: 3), ValueError, "sf must be an int >= 1 dividing"),
    "data net FBFy": (_data_net_call(FBFy=lambda a: a["FBFy"][:, :1]), ValueError, "FBFy must be (N, C, H, W)"),
    "data net FB": (_data_net_call(FB=lambda a: a["FB"][..., :4]), ValueError, "FB must be (N or 1, 1 or C, H, W)"),
    "data net F2B": (_data_net_call(F2B=lambda a: a["F2B"][:1]), ValueError, "F2B must have FB's shape"),
    "data net real FB": (_data_net_call(FB=lambda a: a["FB"].real), ValueError, "FB must have 5 dimensions"),
    "data net alpha": (_data_net_call(alpha=lambda a: 0.5), ValueError, "alpha must be a tensor of N = 2 values"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_gives_clear_error(case):
    call, error, message = BAD_CALLS[case]
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        call()


def test_blurs_promote_mixed_dtypes():
    """A float64 kernel with a float32 image (the originals' conv2d raises): the result in float64."""
    x, kernel = torch.randn(2, 3, 9, 9), torch.rand(2, 5, 5, dtype=F64)
    expected = correlate(x.double(), per_image_taps(kernel))
    for out in (basicsr.filter2D(x, kernel), dan.BatchBlur(5)(x, kernel)):
        assert out.dtype == F64
        assert_close_to_float64(out, expected)
