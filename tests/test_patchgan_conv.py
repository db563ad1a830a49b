"""bsrops.patchgan_conv / bsrops.nn.PatchGANConv / bsr.archs.discriminators.PatchGANDiscriminator against
references written from the official structures (float64, random weights): outputs and all gradients for every
norm, batch norm in train and eval mode with its running statistics, the official discriminator
layouts (state dicts in the official `model.{i}` layout), backends, opcheck, compile, bad inputs."""
import pytest
import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode

import bsrops
from bsr.archs.discriminators import PatchGANDiscriminator
from bsrops.nn import PatchGANConv
from bsrops.ops._precision import compute_dtype
from logged_ops import LoggedOps, argument_dtypes
from python_formula import FALLBACKS, assert_equal_tensors, native_and_python, needs_native, run_fallback
from reference_modules import NLayerDiscriminatorReference, PDMDiscriminatorReference
from tolerances import assert_close_to_float64
from triton_sm90 import require_interpreter


def calls_delta(run):
    before = bsrops.kernel_calls()
    result = run()
    after = bsrops.kernel_calls()
    return result, {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def reference_block(ours):
    """The eager module sequence the block stands for, with the block's parameters and buffers."""
    conv = ours.conv
    layers = [nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        bias=conv.bias is not None)]
    if ours.norm is not None:
        layers.append(type(ours.norm)(conv.out_channels, affine=ours.norm.affine,
                                      track_running_stats=ours.norm.track_running_stats))
    if ours.activation:
        layers.append(nn.LeakyReLU(ours.negative_slope, True))
    reference = nn.Sequential(*layers).to(conv.weight.dtype)
    state = {("0." if key.startswith("conv.") else "1.") + key.split(".", 1)[1]: value.clone()
             for key, value in ours.state_dict().items()}
    reference.load_state_dict(state)
    return reference


def randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return module


def outputs_and_grads(module, x, grad):
    x = x.detach().requires_grad_()
    module.zero_grad(set_to_none=True)
    out = module(x)
    out.backward(grad)
    return [out.detach(), x.grad, *[p.grad for p in module.parameters()]]


def assert_all_close(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        assert_close_to_float64(a, e)


BLOCKS = [  # norm, activation, affine (instance), bias, kernel, stride, padding
    ("none", True, False, True, 4, 2, 1),
    ("none", False, False, True, 3, 1, 1),
    ("instance", True, False, True, 4, 2, 1),
    ("instance", False, True, False, 3, 2, 2),
    ("batch", True, True, False, 4, 1, 2),
    ("batch", False, True, True, 3, 2, 1),
]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b[0]}-act{int(b[1])}-k{b[4]}s{b[5]}p{b[6]}" for b in BLOCKS])
def test_block_matches_eager_modules(block, backend):
    norm, activation, affine, bias, k, stride, padding = block
    ours = randomise(PatchGANConv(3, 5, k, stride, padding, norm, 0.2, activation, bias, affine=affine).double())
    reference = reference_block(ours)
    x = torch.randn(2, 3, 11, 8, dtype=torch.float64)
    out_shape = reference[0](x).shape
    grad = torch.randn(out_shape, dtype=torch.float64)
    with bsrops.use_backend(backend):
        actual, delta = calls_delta(lambda: outputs_and_grads(ours, x, grad))
    if norm != "none" or activation:
        assert delta.get(f"_patchgan_norm_act_backward.{backend}", 0) == 1, delta
        other = "reference" if backend == "cpu" else "cpu"
        assert not any(name.endswith("." + other) for name in delta), delta
    assert_all_close(actual, outputs_and_grads(reference, x, grad))
    if norm == "batch":
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(ours.norm, name), getattr(reference[1], name)) or \
                (getattr(ours.norm, name) - getattr(reference[1], name)).abs().max() < 1e-12, name


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_train_then_eval_like_batchnorm2d(momentum):
    ours = randomise(PatchGANConv(3, 4, 3, 1, 1, "batch").double())
    ours.norm.momentum = momentum
    reference = reference_block(ours)
    reference[1].momentum = momentum
    for step in range(3):  # running statistics evolve identically
        x = torch.randn(3, 3, 6, 7, dtype=torch.float64) + step
        grad = torch.randn(3, 4, 6, 7, dtype=torch.float64)
        assert_all_close(outputs_and_grads(ours, x, grad), outputs_and_grads(reference, x, grad))
    assert ours.norm.num_batches_tracked.item() == 3
    assert_close_to_float64(ours.norm.running_mean, reference[1].running_mean)
    assert_close_to_float64(ours.norm.running_var, reference[1].running_var)
    ours.eval()
    reference.eval()
    x, grad = torch.randn(2, 3, 5, 6, dtype=torch.float64), torch.randn(2, 4, 5, 6, dtype=torch.float64)
    before = ours.norm.running_mean.clone()
    assert_all_close(outputs_and_grads(ours, x, grad), outputs_and_grads(reference, x, grad))
    assert torch.equal(ours.norm.running_mean, before) and ours.norm.num_batches_tracked.item() == 3


@pytest.mark.parametrize("norm", ["instance", "none"])  # none + LeakyReLU: oneDNN's post-op in float32
def test_float32_and_non_contiguous_input(norm):
    ours = randomise(PatchGANConv(3, 6, 4, 2, 1, norm, bias=norm == "none"))  # a bias before IN has zero gradient
    reference = reference_block(ours).double()
    x = torch.randn(2, 3, 12, 10).to(memory_format=torch.channels_last)
    grad = torch.randn(2, 6, 6, 5)
    actual = outputs_and_grads(ours, x, grad)
    expected = outputs_and_grads(reference, x.double(), grad.double())
    for a, e in zip(actual, expected):
        assert a.dtype == torch.float32
        assert_close_to_float64(a, e)


def test_batch_zero_instance_norm():
    ours = PatchGANConv(3, 4, 4, 2, 1, "instance").double()
    x = torch.randn(0, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    out = ours(x)
    out.sum().backward()
    assert out.shape == (0, 4, 4, 4) and x.grad.shape == x.shape and not ours.conv.weight.grad.any()


@pytest.mark.parametrize("padding", [1, 2])
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_nlayer_discriminator_loads_official_layout(norm, padding):
    reference = randomise(NLayerDiscriminatorReference(3, 4, 3, norm, padding).double())
    ours = PatchGANDiscriminator.nlayer(3, 4, 3, norm, padding).double()
    ours.load_state_dict(reference.state_dict())  # keys model.{i} of the interleaved official sequence
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    grad = torch.randn_like(reference(x))
    assert_all_close(outputs_and_grads(ours, x, grad), outputs_and_grads(reference, x, grad))


def test_pdm_discriminator_loads_official_layout():
    reference = randomise(PDMDiscriminatorReference(3, 4, 3, 2).double())
    ours = PatchGANDiscriminator.pdm(3, 4, 3, 2).double()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    out = reference(x)
    assert out.shape == (2, 4, 4, 4)  # nf channels, not 1 (PDM-SR's discriminator, docs/methods.md)
    grad = torch.randn_like(out)
    assert_all_close(outputs_and_grads(ours, x, grad), outputs_and_grads(reference, x, grad))


@pytest.mark.parametrize("norm,training", [("none", True), ("instance", True), ("batch", True), ("batch", False)])
def test_opcheck(norm, training):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    affine = [torch.randn(4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    running = [torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5]
    if norm != "batch":
        running = [None, None]
    torch.library.opcheck(torch.ops.bsrops.patchgan_conv.default,
                          (x, weight, None, 2, 1, norm, *affine, *running, training, 0.1, 1e-5, 0.2, True))
    y = torch.randn(2, 4, 5, 3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.bsrops.patchgan_norm_act.default,  # carries the autograd formula
                          (y.clone().requires_grad_(), *affine, *running, norm, training, 0.1, 1e-5, 0.2, True))
    torch.library.opcheck(torch.ops.bsrops._patchgan_norm_act.default,
                          (y, *[a.detach() for a in affine], *[r.clone() if r is not None else None for r in running],
                           norm, training, 0.1, 1e-5, 0.2, True))
    torch.library.opcheck(torch.ops.bsrops._patchgan_conv2d.default, (x, weight, affine[0], 2, 1))


@pytest.mark.parametrize("x_format", [torch.contiguous_format, torch.channels_last])
def test_conv_backward_runs_in_channels_last(x_format):
    """The norm's backward hands grad_y to the conv in channels_last; the conv's backward moves x there
    and grad_x back to x's layout (oneDNN needs no reorder buffers): same gradients as eager."""
    ours = randomise(PatchGANConv(3, 16, 4, 2, 1, "instance").double())
    reference = reference_block(ours)
    x = torch.randn(2, 3, 18, 20, dtype=torch.float64).contiguous(memory_format=x_format)
    grad = torch.randn(reference[0](x).shape, dtype=torch.float64)
    with bsrops.use_backend("cpu"):
        actual, delta = calls_delta(lambda: outputs_and_grads(ours, x, grad))
    assert delta.get("_relayout.cpu") == (3 if x_format == torch.contiguous_format else 1), delta
    assert actual[1].is_contiguous(memory_format=x_format)
    assert_all_close(actual, outputs_and_grads(reference, x, grad))


@pytest.mark.slow
def test_torch_compile_fullgraph():
    ours = PatchGANDiscriminator.nlayer(3, 4, 2, "batch")
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a: ours(a).square().sum(), fullgraph=True)
    value = compiled(x)
    value.backward()
    grad = x.grad.clone()
    x.grad = None
    expected = ours(x).square().sum()
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-5)  # batch statistics moved on one step
    torch.testing.assert_close(grad, x.grad)
    assert ours.model[1].norm.num_batches_tracked.item() == 2


BAD_INPUTS = [
    (dict(norm="group"), ValueError, "norm must be one of none, instance, batch"),
    (dict(weight=torch.randn(4, 5, 3, 3)), ValueError, "weight must be \\(C_out, 3, k, k\\)"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(padding=1.0), TypeError, "padding must be an int"),
    (dict(norm_weight=torch.randn(3)), ValueError, "norm_weight must be \\(4,\\)"),
    (dict(running_mean=torch.zeros(4)), ValueError, "give both running_mean and running_var"),
    (dict(x=torch.randn(2, 3, 1, 1)), ValueError, "smaller than the 3x3 kernel"),
    (dict(x=torch.randn(1, 3, 3, 3), norm="batch", stride=3), ValueError, "more than one value per channel"),
    (dict(negative_slope=-1.0), ValueError, "negative_slope must be a finite float >= 0"),
    (dict(x=torch.randint(0, 3, (2, 3, 8, 8))), TypeError, "x must be float16/bfloat16/float32/float64"),
    (dict(norm_weight=torch.ones(4, dtype=torch.int64)), TypeError,
     "norm_weight must be float16/bfloat16/float32/float64"),
    (dict(negative_slope=float("nan")), ValueError, "negative_slope must be a finite float >= 0 .*got nan"),
    (dict(eps=-1e-5), ValueError, "eps must be a finite float >= 0, got -1e-05"),
    (dict(eps=float("nan")), ValueError, "eps must be a finite float >= 0, got nan"),
    (dict(momentum=float("nan"), norm="batch"), ValueError, "momentum must be a finite float, got nan"),
    (dict(norm_weight=torch.ones(4, device="meta")), ValueError, "norm_weight is on meta but x is on cpu"),
    (dict(norm_bias=torch.ones(4, device="meta")), ValueError, "norm_bias is on meta but x is on cpu"),
    (dict(norm="batch", running_mean=torch.zeros(4, device="meta"), running_var=torch.ones(4)), ValueError,
     "running_mean is on meta but x is on cpu"),
    (dict(norm="batch", running_mean=torch.zeros(4), running_var=torch.ones(4, device="meta"), training=False),
     ValueError, "running_var is on meta but x is on cpu"),
    (dict(bias=torch.ones(4, device="meta")), ValueError, "bias is on meta but x is on cpu"),
    (dict(weight=torch.randn(4, 3, 3, 3, device="meta")), ValueError, "weight is on meta but x is on cpu"),
    (dict(norm="batch", running_mean=torch.zeros(1).expand(4), running_var=torch.ones(4)), ValueError,
     "running_mean is updated in place in training mode and must not be an expanded tensor"),
]


@pytest.mark.parametrize("change,error,message", BAD_INPUTS)
def test_bad_input_gives_clear_error(change, error, message):
    args = dict(x=torch.randn(2, 3, 8, 8), weight=torch.randn(4, 3, 3, 3), bias=None, stride=2, padding=0,
                norm="instance")
    args.update(change)
    with pytest.raises(error, match=message):
        bsrops.patchgan_conv(**args)


@pytest.mark.parametrize("backend", ["cpu", "reference", "triton"])
def test_fused_kernels_check_scalars_devices_and_updated_buffers(backend):
    """The norm ops called directly (patchgan_conv checks before them): eps, momentum and negative_slope in
    patchgan_norm_act (functional: it updates copies of the running statistics) and in _patchgan_norm_act, which
    also refuses expanded running statistics that it would update in place. (A meta argument sends both to their
    fake kernels: patchgan_conv's check, test_bad_input_gives_clear_error, is where that is caught.)"""
    if backend == "triton":
        require_interpreter()
    cases = [(dict(eps=-1.0), "eps must be a finite float >= 0"), (dict(momentum=float("nan")), "momentum must be"),
             (dict(negative_slope=float("nan")), "negative_slope must be a finite float >= 0"),
             (dict(running_mean=torch.zeros(1).expand(4)), "running_mean is updated in place in training mode")]
    for change, message in cases:
        args = dict(y=torch.randn(2, 4, 3, 3), norm_weight=torch.ones(4), norm_bias=torch.zeros(4),
                    running_mean=torch.zeros(4), running_var=torch.ones(4), norm="batch", training=True, momentum=0.1,
                    eps=1e-5, negative_slope=0.2, activation=True)
        args.update(change)
        with bsrops.use_backend(backend):
            if "updated in place" not in message:
                with pytest.raises(ValueError, match=message):
                    torch.ops.bsrops.patchgan_norm_act(*args.values())
            with pytest.raises(ValueError, match=message):
                torch.ops.bsrops._patchgan_norm_act(*args.values())


def test_module_rejects_unknown_norm():
    with pytest.raises(ValueError, match="norm must be one of"):
        PatchGANConv(3, 4, norm="layer")


# ---- the native autograd formulas (C++) against the Python ones ----

FORMULA_CASES = [  # norm, activation, training
    ("none", True, True),
    ("instance", True, True),
    ("instance", False, True),
    ("batch", True, True),
    ("batch", True, False),
]


def formula_run(norm, activation, training, n, dtype, wanted):
    """Outputs, running statistics and gradients (None where not wanted) of one block, and its nodes' names."""
    shapes = [(n, 3, 9, 8), (5, 3, 4, 4), (5,), (5,), (5,)]  # x, weight, bias, norm_weight, norm_bias
    args = [torch.randn(shape, dtype=dtype).requires_grad_(i in wanted) for i, shape in enumerate(shapes)]
    running = [torch.randn(5, dtype=dtype), torch.rand(5, dtype=dtype) + 0.5] if norm == "batch" else [None, None]
    x, weight, bias, norm_weight, norm_bias = args
    out = bsrops.patchgan_conv(x, weight, bias, 2, 1, norm, norm_weight, norm_bias, *running, training,
                               activation=activation)
    names = [out.grad_fn.name(), out.grad_fn.next_functions[0][0].name()] if out.grad_fn else []
    out.backward(torch.randn_like(out))
    return [out.detach(), *(r for r in running if r is not None), *(a.grad for a in args)], names


@pytest.mark.skipif(needs_native, reason="needs the native extension")
@pytest.mark.parametrize("wanted", [range(5), (0,), (1, 4)], ids=["all", "x", "weight_norm_bias"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [1, 2], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("norm,activation,training", FORMULA_CASES)
def test_native_formulas_match_the_python_formulas(norm, activation, training, n, dtype, wanted):
    """With _C, the Autograd kernels and CPU composites of _patchgan_conv2d and patchgan_norm_act are C++; without
    it (and under the Python backends) they are the Python formulas. Both run the same ops in the same order:
    outputs, updated running statistics and gradients equal bit for bit, for every norm, in either layout of the
    convolution's backward, in half precision, whichever inputs require a gradient."""
    from bsrops.ops import patchgan_conv as module

    formulas = [("_patchgan_conv2d", module._conv2d_composite, module._conv2d_autograd),
                ("patchgan_norm_act", module._norm_act_composite, module._norm_act_autograd)]
    native, python = native_and_python(lambda: formula_run(norm, activation, training, n, dtype, wanted), formulas)
    assert all("CppNode" in name for name in native[1]), native[1]
    assert not any("CppNode" in name for name in python[1]), python[1]
    assert_equal_tensors(native[0], python[0])


def test_python_backends_run_the_python_formulas():
    """Under the reference and triton backends the block's nodes are the Python formulas' (their precision policy);
    on the native backends they are C++ nodes."""
    ours = PatchGANConv(3, 5, norm="instance")
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    for backend in ("cpu", "reference", "triton"):
        with bsrops.use_backend(backend):
            out = ours(x)
        names = [out.grad_fn.name(), out.grad_fn.next_functions[0][0].name()]
        native = backend == "cpu" and not needs_native
        assert all(("CppNode" in name) == native for name in names), (backend, names)


FALLBACK_CODE = """
import torch, bsrops
import torch.nn.functional as F
def eager(x, weight, bias, stride, padding, norm, norm_weight, norm_bias, running_mean, running_var, training):
    y = F.conv2d(x, weight, bias, stride, padding)
    return F.leaky_relu(F.batch_norm(y, running_mean, running_var, norm_weight, norm_bias, training), 0.2)
torch.manual_seed(0)
args = [torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(5, 3, 4, 4, dtype=torch.float64),
        torch.randn(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64) + 0.5, torch.randn(5, dtype=torch.float64)]
grad = torch.randn(2, 5, 4, 4, dtype=torch.float64)
results = []
for run in (eager, bsrops.patchgan_conv):
    leaves = [a.clone().requires_grad_() for a in args]
    running = [torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)]
    out = run(leaves[0], leaves[1], leaves[2], 2, 1, "batch", leaves[3], leaves[4], *running, True)
    out.backward(grad)
    results.append([out, *running, *(a.grad for a in leaves)])
assert all(torch.allclose(a, b) for a, b in zip(*results))
print(bsrops.backend_info()["backend"], "CppNode" in out.grad_fn.name())
"""


@pytest.mark.parametrize("fallback", sorted(FALLBACKS))
def test_fallback_runs_the_python_formulas(fallback):
    """Without _C, and with a _C built for another torch, patchgan_conv runs the Python formulas (not the C++
    nodes); outputs, running statistics and gradients match the reference."""
    assert run_fallback(FALLBACK_CODE, fallback).split() == ["reference", "False"]


# ---- norm_dtype: the dtype the fused norm kernel runs in, by the C++ and the Python composite ----

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
NORM_DTYPE_CASES = [  # (y, norm_weight, norm_bias): norm_dtype with kernels that take half dtypes (CUDA), without
    ((BF16, BF16, BF16), BF16, F32),
    ((F16, F32, None), F16, F32),  # float32 parameters, as autocast keeps them
    ((BF16, None, None), BF16, F32),
    ((BF16, F16, None), F32, F32),  # a parameter of the other half dtype
    ((F16, F64, F16), F64, F64),
    ((F32, BF16, None), F32, F32),
    ((F64, None, F32), F64, F64),
]


def norm_act_arguments(dtypes, device):
    """patchgan_norm_act's arguments for batch norm in training: y and the norm parameters in `dtypes` (None:
    absent), float32 running statistics."""
    y_dtype, weight_dtype, bias_dtype = dtypes
    params = [None if d is None else torch.rand(3, dtype=d, device=device) + 0.5 for d in (weight_dtype, bias_dtype)]
    return (torch.randn(2, 3, 4, 5, dtype=y_dtype, device=device), *params, torch.zeros(3, device=device),
            torch.ones(3, device=device), "batch", True, 0.1, 1e-5, 0.2, True)


@pytest.mark.skipif(needs_native, reason="needs the native extension")
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("dtypes,with_half_kernels,without", NORM_DTYPE_CASES,
                         ids=[",".join(str(d).removeprefix("torch.") for d in case[0]) for case in NORM_DTYPE_CASES])
def test_norm_dtype_of_the_native_and_python_composites(dtypes, with_half_kernels, without, device, monkeypatch):
    """On the native backend of each device (fake tensors: CUDA ones need no GPU), the C++ composite (the device's
    kernel of patchgan_norm_act) and the Python one (norm_dtype) call the fused kernel with y and the norm parameters
    in one dtype, y's own for float16 / bfloat16 on CUDA, and the running statistics in its compute_dtype (float32
    for the half dtypes); out comes back in y's dtype, the new running statistics in theirs."""
    from bsrops.ops import patchgan_conv as module

    monkeypatch.setattr(bsrops._backend, "active_backend", lambda device_type: device_type)  # cpu, cuda
    expected = with_half_kernels if device == "cuda" else without
    stats = compute_dtype(expected)
    key = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, device.upper()))
    composites = {"C++": lambda *args: torch.ops.bsrops.patchgan_norm_act.default.redispatch(key, *args),
                  "Python": module._norm_act_composite}
    results = {}
    with FakeTensorMode():
        args = norm_act_arguments(dtypes, device)
        assert module.norm_dtype(*args[:3]) == expected
        for name, composite in composites.items():
            with LoggedOps(argument_dtypes) as calls:
                outputs = composite(*args)
            results[name] = [call for call in calls if call[0].startswith("bsrops::")], [t.dtype for t in outputs]
    assert results["C++"] == results["Python"], results
    [(op, arguments)] = results["C++"][0]
    assert op == "bsrops::_patchgan_norm_act"
    assert arguments[:5] == [expected, *(None if d is None else expected for d in dtypes[1:]), stats, stats]
    assert results["C++"][1] == [dtypes[0], stats, stats, F32, F32]


@pytest.mark.skipif(needs_native, reason="needs the native extension")
def test_cpu_kernels_take_float32_and_float64_with_statistics_in_that_dtype():
    """The CPU fused kernels called directly: float16 / bfloat16 refused (the composites give them float32 copies);
    mean and rstd in y's dtype, and the backward refuses others."""
    ops = torch.ops.bsrops
    y = torch.randn(2, 3, 4, 5)
    with pytest.raises(RuntimeError, match="float32 or float64 only, got BFloat16"):
        ops._patchgan_norm_act(y.bfloat16(), None, None, None, None, "instance", True, 0.1, 1e-5, 0.2, True)
    out, mean, rstd = ops._patchgan_norm_act(y, None, None, None, None, "instance", True, 0.1, 1e-5, 0.2, True)
    assert mean.dtype == rstd.dtype == torch.float32
    with pytest.raises(RuntimeError, match="mean and rstd must be Float for Float tensors, got Double"):
        ops._patchgan_norm_act_backward(out, y, out, mean.double(), rstd.double(), None, "instance", True, 0.2, True,
                                        [True, False, False])
