"""Run benchmark cases in a fresh Python process (memory.py's peak memory, check_targets' whole-block times).

A case is named by a *factory*: a module-level function of a benchmark file that takes
JSON-serialisable arguments and returns a zero-argument callable running the case once. The
child imports the file, runs `body` (Python source that sees `module`, `factory(name)` and
`spec["payload"]`) and `report(result)`s one JSON-serialisable result.

Why a fresh process: with glibc's default malloc, whether a freshly allocated tensor costs page
faults depends on what the process allocated and freed before (large freed blocks go back to
the OS or not), so timings and RSS taken after other benchmarks carry their history.
"""
import inspect
import json
import os
import subprocess
import sys

_MARK = "BSR_CHILD_RESULT "

_PRELUDE = r"""
import importlib.util, json, sys
spec = json.loads(sys.argv[1])
sys.path[:0] = spec["path"]
import torch
torch.set_num_threads(spec["threads"])
module_spec = importlib.util.spec_from_file_location("_bsr_child_target", spec["file"])
module = importlib.util.module_from_spec(module_spec)
module_spec.loader.exec_module(module)

def factory(name):
    found = module
    for part in name.split("."):
        found = getattr(found, part)
    return found

def report(result):
    print(%r + json.dumps(result), flush=True)
""" % _MARK


def factory_file(factory):
    """The source file of a module-level factory (ValueError for anything else)."""
    source = inspect.getsourcefile(factory)
    if source is None or "<locals>" in factory.__qualname__:
        raise ValueError("fresh_process: a factory must be a module-level function of a source file")
    return os.path.abspath(source)


def run(body, source, payload, env=None, threads=None, timeout=900):
    """Run `body` in a fresh interpreter that has imported the benchmark file `source`; returns what it
    reported. RuntimeError with the child's stderr when it fails."""
    import torch

    here = os.path.dirname(source)
    spec = {"file": source, "threads": threads or torch.get_num_threads(), "path": [here, os.path.dirname(here)],
            "payload": payload}
    proc = subprocess.run([sys.executable, "-c", _PRELUDE + body, json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    raise RuntimeError(f"fresh_process: the child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


_MEDIAN_TIMES = r"""
import statistics, time
cases = {name: factory(factory_name)(*args) for name, (factory_name, args) in spec["payload"]["cases"].items()}
for run_case in cases.values():
    for _ in range(2):  # warm-up: lazy initialisation, oneDNN primitive caches
        run_case()
samples = {name: [] for name in cases}
for _ in range(spec["payload"]["rounds"]):
    for name, run_case in cases.items():
        start = time.perf_counter()
        run_case()
        samples[name].append(time.perf_counter() - start)
report({name: statistics.median(values) for name, values in samples.items()})
"""


def median_times(cases, rounds=15, env=None, threads=None):
    """{name: median seconds per call} for cases {name: (factory, args)} (factories of one benchmark file),
    timed interleaved in one fresh process: each round calls every case once, after two warm-up calls."""
    sources = {factory_file(factory) for factory, _ in cases.values()}
    if len(sources) != 1:
        raise ValueError(f"median_times: the factories must come from one file, got {sorted(sources)}")
    payload = {"cases": {name: [factory.__qualname__, list(args)] for name, (factory, args) in cases.items()},
               "rounds": rounds}
    return run(_MEDIAN_TIMES, sources.pop(), payload, env=env, threads=threads)
