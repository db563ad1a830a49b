"""Test session setup.

TRITON_INTERPRET=1 must be set before any module decorates a kernel with @triton.jit
(triton reads it at decoration time), so it is set here, before bsrops is imported:
the Triton kernels then run on CPU tensors through the same bsrops ops. torch.compile
gets a fresh cache directory per session (see below).
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TRITON_INTERPRET", "1")
# torch.compile's caches key a graph by the names of its ops, not by how a custom op is
# implemented: a cache written with an older bsrops could replay a backward that calls ops
# which no longer exist. Each test session compiles into a fresh cache.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bsr-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _prepared_images_in_a_temporary_folder(tmp_path_factory, monkeypatch):
    """Training folders' prepared form (bsr.data.cache) goes to the session's temporary folder, not
    the user's cache folder."""
    from bsr.data import cache

    monkeypatch.setattr(cache, "default_root", lambda: str(tmp_path_factory.getbasetemp() / "prepared"))


# ---- views: every tensor argument of an op fed as a strided, an expanded and a storage-offset view ----

VIEW_KINDS = ("strided", "expanded", "offset")


def pytest_generate_tests(metafunc):
    """A test that takes `view_kind` runs once per kind of view (VIEW_KINDS)."""
    if "view_kind" in metafunc.fixturenames:
        metafunc.parametrize("view_kind", VIEW_KINDS)


def view_of(t, kind):
    """(base, make): make(base) is a `kind` view with t's shape, or None where the shape allows none.

    strided: every other element of a twice-as-long last axis of size > 1 (not dense); expanded: the first
    slice along the first axis of size > 1, expanded over it (stride 0; the values change to that slice's);
    offset: the elements 3.. of a flat buffer (storage offset 3, odd: complex views need an even one)."""
    t = t.detach()
    axes = [d for d in range(t.dim()) if t.shape[d] > 1]
    if kind == "offset":
        base = t.new_zeros(t.numel() + 3)
        base[3:] = t.flatten()
        return base, lambda b: b[3:].view(t.shape)
    if not axes:
        return None
    if kind == "strided":
        d = axes[-1]
        base = torch.stack([t, torch.zeros_like(t)], d + 1).flatten(d, d + 1)
        step = tuple(slice(None, None, 2) if a == d else slice(None) for a in range(t.dim()))
        return base, lambda b: b[step]
    if kind == "expanded":
        return t.narrow(axes[0], 0, 1).clone(), lambda b: b.expand(t.shape)
    raise ValueError(kind)


def _call(fn, args, grad_names, grad_outs, vary=None, kind=None):
    """fn(**args), args[vary] (or grad_outs[i] for vary = 'grad_out<i>') fed as its `kind` view. Returns (outputs
    and the gradients of the grad_names arguments, the args as passed)."""
    # fresh copies: the op may update some in place (running statistics)
    args = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    grad_outs = list(grad_outs)
    if vary is not None and vary.startswith("grad_out"):
        index = int(vary[len("grad_out"):])
        base, make = view_of(grad_outs[index], kind)
        grad_outs[index] = make(base)
    elif vary is not None:
        base, make = view_of(args[vary], kind)
        args[vary] = make(base.requires_grad_(vary in grad_names))
    leaves = {}
    for name in grad_names:
        if args[name] is not None:
            if not args[name].requires_grad:
                args[name].requires_grad_()
            leaves[name] = args[name]  # the view itself for the varied argument: its gradient has its shape
    outs = fn(**args)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    used = [(o, g) for o, g in zip(outs, grad_outs) if o.requires_grad]
    grads = torch.autograd.grad([o for o, _ in used], list(leaves.values()), [g for _, g in used],
                                allow_unused=True) if used and leaves else ()
    results = {f"output {i}": o.detach() for i, o in enumerate(outs)}
    results.update({f"grad of {name}": g for name, g in zip(leaves, grads) if g is not None})
    return results, args


def _assert_same(actual, expected, what, exact=True):
    """exact: as the contiguous call on the same backend (rounding apart); else: the float64 reference, within
    the tolerance of actual's dtype (tolerances.py)."""
    from tolerances import assert_close_to_float64

    assert actual.keys() == expected.keys(), what
    for key in actual:
        assert actual[key].shape == expected[key].shape, f"{what}, {key}"
        if not exact:
            try:
                assert_close_to_float64(actual[key], expected[key].double())
            except AssertionError as error:
                raise AssertionError(f"{what}, {key}: {error}") from None
            continue
        error = (actual[key] - expected[key]).abs().max().item() if actual[key].numel() else 0.0
        scale = expected[key].abs().max().item() if expected[key].numel() else 0.0
        bar = (1e-12 if actual[key].dtype == torch.float64 else 1e-6) * max(1.0, scale)
        assert error <= bar, f"{what}, {key}: {error:.3g} away"


@pytest.fixture
def assert_views_match():
    """assert_views_match(fn, args, grad_names, kind, backends, errors, only): for every tensor argument of fn in
    turn, and the gradient of each output, fed as a `kind` view (view_of): on each backend the outputs, the
    gradients of the grad_names arguments and the tensors the op updates in place (the other tensor arguments)
    equal those of the same values fed contiguous, and the float64 reference backend's (the values: args', or for
    'expanded' each tensor's expanded values, which every call then uses). errors: {argument: (exception, regex)}
    for views the op must refuse."""
    import bsrops

    def check(fn, args, grad_names, kind, backends, errors=None, only=None):
        """only: {backend: the arguments to vary there} for backends that differ from the others only in
        kernels which some arguments never reach (default: every argument)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny tensors: a second thread only adds synchronisation (2x slower on 2 busy cores)
        try:
            check_all(fn, args, grad_names, kind, backends, errors or {}, only or {})
        finally:
            torch.set_num_threads(threads)

    def check_all(fn, args, grad_names, kind, backends, errors, only):
        tensors = [k for k, v in args.items() if isinstance(v, torch.Tensor)]
        with torch.no_grad(), bsrops.use_backend("reference"):  # the outputs' shapes and dtypes
            plain = fn(**{k: args[k].clone() if k in tensors else v for k, v in args.items()})
        plain = plain if isinstance(plain, (tuple, list)) else (plain,)
        generator = torch.Generator().manual_seed(1)
        grad_outs = [torch.randn(o.shape, generator=generator, dtype=torch.float64).to(o.device, o.dtype)
                     for o in plain]
        if kind == "expanded":  # every call sees the expanded values
            expand = lambda t: (lambda v: t if v is None else v[1](v[0]).contiguous())(view_of(t, kind))  # noqa: E731
            args = {k: expand(v) if k in tensors else v for k, v in args.items()}
            grad_outs = [expand(g) for g in grad_outs]
        as64 = {k: v.double() if k in tensors else v for k, v in args.items()}
        with bsrops.use_backend("reference"):
            truth, truth_args = _call(fn, as64, grad_names, [g.double() for g in grad_outs])
        varied = tensors + [f"grad_out{i}" for i in range(len(grad_outs))]
        for backend in backends:
            with bsrops.use_backend(backend):
                check_backend(fn, args, grad_names, grad_outs, kind, backend, errors, only.get(backend, varied),
                              truth, truth_args)

    def check_backend(fn, args, grad_names, grad_outs, kind, backend, errors, varied, truth, truth_args):
        """The checks on one backend (use_backend entered), `varied` the arguments fed as views in turn."""
        tensors = [k for k, v in args.items() if isinstance(v, torch.Tensor)]
        same, same_args = _call(fn, args, grad_names, grad_outs)
        _assert_same(same, truth, f"{backend}, contiguous, against the float64 reference", exact=False)
        for name in varied:
            source = grad_outs[int(name[len("grad_out"):])] if name.startswith("grad_out") else args[name]
            if view_of(source, kind) is None:
                continue  # a 1-element tensor has no strided or expanded view
            what = f"{backend}, {name} as a {kind} view"
            if name in errors:
                with pytest.raises(errors[name][0], match=errors[name][1]):
                    _call(fn, args, grad_names, grad_outs, name, kind)
                continue
            ours, ours_args = _call(fn, args, grad_names, grad_outs, name, kind)
            _assert_same(ours, same, what + ", against the contiguous call")
            _assert_same(ours, truth, what + ", against the float64 reference", exact=False)
            for buffer in tensors:  # updated in place (running statistics), or left alone
                if buffer not in grad_names:
                    _assert_same({buffer: ours_args[buffer]}, {buffer: same_args[buffer]}, what)
                    _assert_same({buffer: ours_args[buffer]}, {buffer: truth_args[buffer]}, what, exact=False)

    return check
