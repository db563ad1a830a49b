"""Backend selection for the bsrops ops.

One op has one schema whichever backend runs it, defined in Python by the op's module
(`define_schemas`). The native kernels (`cpu`, `cuda`) are registered by `_C` for the CPU
and CUDA dispatch keys. The other backends are Python kernels registered over them for the
devices they serve, through a torch.library.Library whose destruction restores the native
kernels:

- `reference`: the pure-PyTorch references (CPU and CUDA); also the fallback without `_C`;
- `triton`: the Triton kernels (CUDA; and CPU tensors under TRITON_INTERPRET=1);
- `cpu_shared`: the per-element functions the CUDA kernels use, looped on the CPU.

Where _C runs an op's autograd formula in C++ (dpcb, patchgan_conv's two nodes), `reference` and `triton`
install the op's Python formula over it for their devices (`register_python_formula`).

Choose with BSROPS_BACKEND=auto|cpu|cuda|triton|reference|cpu_shared at import, or with
`use_backend(name)` around a block. The choice is process-wide: it changes the dispatcher's
kernels, which every thread calls, so `use_backend` refuses (RuntimeError) to enter a backend
while another thread is inside a different one. `kernel_calls()` counts which kernels ran.
"""
import collections
import contextlib
import importlib
import os
import threading
import warnings

import torch

from . import _extension

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference", "cpu_shared")
NATIVE = ("auto", "cpu", "cuda")
PYTHON_FORMULA_BACKENDS = ("reference", "triton")  # see register_python_formula

# backend -> op name -> Python kernel (same signature as the op)
_kernels = collections.defaultdict(dict)
# backend -> op name -> Python Autograd kernel (with the dispatch keyset first), over a native one
_autograd_kernels = collections.defaultdict(dict)
_python_calls = collections.Counter()
_active = []  # stack of (backend, devices, Library); the last one serving a device wins
_owners = {}  # id of a use_backend entry in _active -> (backend, thread) that entered it
_lock = threading.Lock()  # guards _active and _owners: check, install and remove as one step
_schemas = torch.library.Library("bsrops", "DEF")  # holds every op's schema for the life of the process


def define_schemas(schemas):
    """Define torch.ops.bsrops.<name> for each schema string, its one definition (each op's module passes its
    own). The native kernels of _C attach to the names whether _C was loaded before or after."""
    for schema in schemas:
        _schemas.define(schema)


def register_kernel(backend, op_name, fn, check=None):
    """Declare `fn` as `backend`'s kernel for torch.ops.bsrops.<op_name>. `check`, when given, is called
    with the kernel's arguments first and raises on inputs `fn` must not receive: the Python kernels
    take validated inputs, also when the op is called directly."""
    _kernels[backend][op_name] = fn if check is None else _checked(check, fn)


def register_lazy_kernel(backend, op_name, module, function, check=None):
    """Declare bsrops.<module>.<function> as `backend`'s kernel (`check` as in register_kernel),
    importing the module on the first call only (the Triton kernels are never imported at package
    import). Every Triton kernel is registered here."""
    def kernel(*args):
        return getattr(importlib.import_module(f"bsrops.{module}"), function)(*args)

    register_kernel(backend, op_name, kernel, check)


def register_python_formula(op_name, autograd_kernel, composite):
    """For an op whose native backends run its formula in C++ (an Autograd kernel and a composite of _C): the
    Python backends (PYTHON_FORMULA_BACKENDS) run the Python one, `autograd_kernel` (ops/_common.register_autograd's)
    installed for the Autograd keys of the devices they serve, and `composite` as their kernel of the op unless
    one was registered for it, so that their fused kernels run under the Python precision policy
    (_precision.run_fused)."""
    for backend in PYTHON_FORMULA_BACKENDS:
        _autograd_kernels[backend][op_name] = autograd_kernel
        if op_name not in _kernels[backend]:
            register_kernel(backend, op_name, composite)


def _checked(check, fn):
    def kernel(*args):
        check(*args)
        return fn(*args)

    return kernel


def _devices(backend):
    if backend == "reference":
        return ("CPU", "CUDA")
    if backend == "cpu_shared":
        return ("CPU",)
    if backend == "triton":
        return ("CPU", "CUDA") if os.environ.get("TRITON_INTERPRET") == "1" else ("CUDA",)
    return ()


def _counted(name, fn):
    def kernel(*args):
        _python_calls[name] += 1
        return fn(*args)

    return kernel


def _install(backend, devices):
    """A Library holding `backend`'s Python kernels for `devices`."""
    library = torch.library.Library("bsrops", "IMPL")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel")
        for op_name, fn in _kernels[backend].items():
            for device in devices:
                library.impl(op_name, _counted(f"{op_name}.{backend}", fn), device, allow_override=True)
        for op_name, kernel in _autograd_kernels[backend].items():
            for device in devices:
                library.impl(op_name, kernel, f"Autograd{device}", with_keyset=True, allow_override=True)
    _forget_resolved_kernels(backend)
    return library


def _forget_resolved_kernels(backend):
    """Drop the Python dispatcher's cached kernel choices (torch.compile's and opcheck's tracing) for the ops
    `backend` registers: a device's Autograd kernel over the native Autograd one changes which key serves it, and
    a choice cached while the backend was installed would outlive it."""
    for op_name in {*_kernels[backend], *_autograd_kernels[backend]}:
        getattr(torch.ops.bsrops, op_name).default._dispatch_cache.clear()


def _check_name(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")


@contextlib.contextmanager
def use_backend(backend):
    """Run the bsrops ops on `backend` (for the devices it serves) while the block runs.

    Process-wide: the kernels are swapped in torch's dispatcher, which all threads share, so every thread's bsrops
    calls run on `backend` until the block exits, not only the calling thread's. Entering a backend while another
    thread is inside a different one raises RuntimeError naming both (each would run on the other's kernels);
    nesting in one thread, and one backend entered by several threads, are fine.
    """
    _check_name(backend)
    entry_thread = threading.current_thread()
    with _lock:
        for other, owner in _owners.values():
            if owner is not entry_thread and other != backend:
                raise RuntimeError(
                    f"bsrops.use_backend({backend!r}) in thread {entry_thread.name!r} while thread {owner.name!r} is "
                    f"inside use_backend({other!r}): the backend is process-wide (every thread's calls run on the "
                    f"last one entered), so both blocks would run on one of them; enter one backend from both threads "
                    f"or run the blocks one after the other")
        library = None if backend in NATIVE else _install(backend, _devices(backend))
        entry = (backend, _devices(backend), library)
        _active.append(entry)
        _owners[id(entry)] = (backend, entry_thread)
    try:
        yield
    finally:
        with _lock:
            # this entry, which need not be the last one when blocks of several threads interleave
            del _active[next(i for i, e in enumerate(_active) if e is entry)]
            del _owners[id(entry)]
            if library is not None:
                library._destroy()
                _forget_resolved_kernels(backend)


def _base_backend(device_type):
    if _extension.native is None:
        return "reference"
    if device_type == "cuda" and not _extension.native.WITH_CUDA:
        return "reference"
    return device_type if device_type in ("cpu", "cuda") else "reference"


def active_backend(device_type):
    """The backend the ops run on for tensors on `device_type` ("cpu", "cuda", ...) now."""
    backend = _base_backend(device_type)
    for name, devices, _ in _active:
        if device_type.upper() in devices:
            backend = name
    return backend


def backend_info(device="cpu"):
    """Which backend the ops run on `device` now, and why."""
    device_type = torch.device(device).type
    backend = active_backend(device_type)
    return {"device": device_type, "backend": backend, "extension": _extension.build_info(),
            "overrides": [f"{name} on {'/'.join(devices).lower()}" for name, devices, _ in _active if devices]}


def kernel_calls():
    """Launch counts by '<op>.<backend>', native and Python kernels together."""
    calls = collections.Counter(_python_calls)
    if _extension.native is not None:
        calls.update(_extension.native.kernel_calls())
    return dict(calls)


def install_defaults():
    """After every op module has registered: the fallback kernels, then BSROPS_BACKEND."""
    if _extension.native is None or not _extension.native.WITH_CUDA:
        devices = ("CPU", "CUDA") if _extension.native is None else ("CUDA",)
        _active.append(("reference", devices, _install("reference", devices)))
    backend = os.environ.get("BSROPS_BACKEND", "auto")
    _check_name(backend)
    if backend not in NATIVE:
        _active.append((backend, _devices(backend), _install(backend, _devices(backend))))
