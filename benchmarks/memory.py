"""CPU peak extra memory of a benchmark provider, measured in a fresh subprocess.

    from memory import peak_extra_memory
    info = peak_extra_memory(make_case, "per_pixel", "cpu", "forward+backward", "paper")
    info["peak_extra_bytes"]

`factory` must be a module-level function of an importable file (a benchmark module);
it is called *in the child* with the JSON-serialisable `args` and returns a zero-argument
callable that runs the provider once (creating the inputs is the factory's job, so they
are not counted). If the callable has a `reset` attribute, it is called after the
warm-up to release what the warm-up left behind (for example `.grad` tensors, which the
measured call would otherwise overwrite in place of allocating).

What is measured: peak RSS during one call of the provider minus the RSS just before
that call, in a fresh Python process:

1. the child builds the inputs and runs the provider `warmup` times (default 1: lazy
   initialisation, thread pools, oneDNN primitive caches and torch.compile compilation
   are not part of the provider's memory);
2. it drops the warm-up results (and calls `run.reset()`), runs the garbage collector and returns freed heap
   memory to the OS (glibc `malloc_trim(0)`), so that pages kept by the allocator
   after the warm-up do not hide the next call's allocations;
3. it reads VmRSS from /proc/self/status, then resets the peak ("high water mark",
   VmHWM) to the current RSS by writing "5" to /proc/self/clear_refs (Linux >= 4.0);
4. it runs the provider once and reads VmHWM: peak_extra = VmHWM - VmRSS(before).

ru_maxrss (getrusage) cannot be reset, so it cannot separate the call from the setup
and the warm-up; clear_refs can. Where clear_refs is not writable the child skips the
warm-up and uses ru_maxrss instead (`method` says which was used); that figure is only
meaningful when the setup's own peak stays below the call's.

The allocator: see BSR_LIVE_MEMORY below (default: glibc's malloc as configured).

RSS counts resident pages: memory that is allocated but never written (e.g. an unused
`torch.empty`) is not counted, memory the provider writes is, whichever allocator it
came from. Tensors the provider returns or leaves behind (outputs, `.grad`) count.
"""
import os

import fresh_process

# BSR_LIVE_MEMORY=1: every allocation of 128 KiB or more gets its own mapping in the child,
# returned to the OS when freed, so RSS follows the live tensors. With glibc's adaptive
# default (what users run), freed blocks are kept or returned depending on the process'
# history, so the same eager call can measure differently from run to run.
LIVE_MEMORY_MALLOC = "glibc.malloc.mmap_threshold=131072"

_MEASURE = r"""
import ctypes, gc, re, resource

def status(key):
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+) kB", f.read()).group(1)) * 1024

def trim():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

payload = spec["payload"]
run = factory(payload["factory"])(*payload["args"])
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    resettable = True
except OSError:
    resettable = False
if resettable:
    for _ in range(payload["warmup"]):
        result = run()
        del result
    reset = getattr(run, "reset", None)
    if reset is not None:  # e.g. drop the .grad tensors the warm-up left behind
        reset()
    trim()
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    result = run()
    peak = status("VmHWM")
    method = "VmHWM reset via /proc/self/clear_refs"
else:
    trim()
    before = status("VmRSS")
    result = run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    method = "ru_maxrss (no warm-up; clear_refs unavailable)"
report({"peak_extra_bytes": max(0, peak - before), "rss_before_bytes": before, "peak_rss_bytes": peak,
        "method": method})
"""


def peak_extra_memory(factory, *args, threads=None, warmup=1, timeout=900, live=None):
    """Peak extra RSS (bytes) of one call of `factory(*args)()` in a fresh subprocess.

    live: count live tensors (see BSR_LIVE_MEMORY above); None: as BSR_LIVE_MEMORY says.
    Returns a dict: peak_extra_bytes, rss_before_bytes, peak_rss_bytes, method.
    Raises RuntimeError (with the child's stderr) when the child fails.
    """
    env = dict(os.environ)
    if live or live is None and os.environ.get("BSR_LIVE_MEMORY") == "1":
        env["GLIBC_TUNABLES"] = LIVE_MEMORY_MALLOC
    payload = {"factory": factory.__qualname__, "args": list(args), "warmup": warmup}
    return fresh_process.run(_MEASURE, fresh_process.factory_file(factory), payload, env=env, threads=threads,
                             timeout=timeout)


def format_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
