"""Benchmark session setup.

BSR_BENCH_SIZE=paper|smoke (default paper) picks the shapes: `paper` are the shapes of
the papers' training steps (docs/methods.md), `smoke` tiny ones for CI, where
the benchmarks run once each with --benchmark-disable:

    pytest benchmarks --benchmark-only                          # timings at paper shapes
    BSR_BENCH_SIZE=smoke pytest benchmarks --benchmark-disable  # CI: each body once, < 1 min

torch.compile providers are skipped (with a reason) at smoke size and under
--benchmark-disable: compiling them takes minutes on CPU.
"""
import os

import pytest
import torch

SIZES = ("paper", "smoke")


def bench_size_from_env():
    size = os.environ.get("BSR_BENCH_SIZE", "paper")
    if size not in SIZES:
        raise pytest.UsageError(f"BSR_BENCH_SIZE must be one of {', '.join(SIZES)}; got {size!r}")
    return size


def pytest_configure(config):
    bench_size_from_env()  # fail early on a bad value


def pytest_report_header(config):
    return f"bsr benchmarks: BSR_BENCH_SIZE={bench_size_from_env()}, torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads"


@pytest.fixture(scope="session")
def bench_size():
    return bench_size_from_env()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
