"""bsr.archs.discriminators.VGGDiscriminator (USR_DA's DiscriminatorVGG, ESRGAN's Discriminator_VGG_128) on the
fused bsrops.nn.PatchGANConv blocks, against plain-layer references written from the documented structure."""
import pytest
import torch
import torch.nn as nn

from bsr.archs.discriminators import VGGDiscriminator


def reference(in_nc, size, d, down_kernel):
    """Conv2d / BatchNorm2d / LeakyReLU layers: 3x3 in->d, then [d s2, 2d, 2d s2, 4d, 4d s2, 8d, 8d s2, 8d, 8d s2]."""
    widths = [d, d, 2 * d, 2 * d, 4 * d, 4 * d, 8 * d, 8 * d, 8 * d, 8 * d]
    layers = [nn.Conv2d(in_nc, d, 3, 1, 1), nn.LeakyReLU(0.2)]
    for i in range(1, 10):
        kernel, stride = (down_kernel, 2) if i % 2 else (3, 1)
        layers += [nn.Conv2d(widths[i - 1], widths[i], kernel, stride, 1, bias=False), nn.BatchNorm2d(widths[i]),
                   nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers), nn.Sequential(nn.Linear(8 * d * (size // 32) ** 2, 100), nn.LeakyReLU(0.2),
                                                 nn.Linear(100, 1))


@pytest.mark.parametrize("down_kernel, size", [(3, 64), (4, 128)])  # USR_DA's; ESRGAN's VGG-128
def test_matches_the_plain_layer_reference_forward_backward_and_running_stats(down_kernel, size):
    torch.manual_seed(0)
    ours = VGGDiscriminator(3, size, 4, down_kernel).double()
    features, classifier = (m.double() for m in reference(3, size, 4, down_kernel))
    convs = [m for m in features if isinstance(m, nn.Conv2d)]
    norms = [m for m in features if isinstance(m, nn.BatchNorm2d)]
    assert [b.conv.kernel_size[0] for b in ours.features] == [c.kernel_size[0] for c in convs]
    for block, conv in zip(ours.features, convs):
        conv.load_state_dict(block.conv.state_dict())
    for block, norm in zip(ours.features[1:], norms):
        nn.init.normal_(block.norm.weight, 1, 0.1)
        nn.init.normal_(block.norm.bias, 0, 0.1)
        norm.load_state_dict(block.norm.state_dict())
    classifier.load_state_dict(ours.classifier.state_dict())
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    x_ref = x.clone().requires_grad_()
    x.requires_grad_()
    out, expected = ours(x), classifier(features(x_ref).flatten(1))
    assert out.shape == (3, 1)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(ours.features[0].conv.weight.grad, convs[0].weight.grad)
    torch.testing.assert_close(ours.features[-1].norm.running_mean, norms[-1].running_mean)


def test_the_image_size_must_be_a_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        VGGDiscriminator(3, 48)
