"""benchmarks/gpu_suite.py --dry-run: every case of the GPU suite on the CPU at smoke shapes, its table and JSON."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import gpu_suite  # noqa: E402

BLUR_FAMILIES = ("blur per-pixel", "blur per-image N=2", "blur per-image N=3", "blur per-image s=1", "blur shared s=1")
FAMILIES = BLUR_FAMILIES + ("usrnet chain K=2", "dpcb restorer", "dpcb estimator", "patchgan")
RUN_ON_CPU = ("eager", "official", "hoisted", "kernel.clone()", "cpu")
MAX_ERROR = {"float32": 1e-5, "bfloat16": 3e-2}


def dry_run(folder, *args):
    assert gpu_suite.main(["--dry-run", "--results", str(folder), *args]) == 0
    [table] = folder.glob("gpu-cpu-dry-run-*.md")
    [results] = folder.glob("gpu-cpu-dry-run-*.json")
    assert table.name[:-3] == results.name[:-5]
    return table.read_text(), json.loads(results.read_text())


def expected_providers(family, mode):
    eager = ["official", "hoisted"] if family.startswith("usrnet") else ["eager"]
    floor = ["kernel.clone()"] if (family, mode) == ("blur per-pixel", "forward") else []
    return eager + floor + ["compiled", "cpu", "cuda", "triton"]


def expected_modes(family):
    if family == "blur per-pixel":
        return ["forward", "forward+backward", "fwd+grad x", "fwd+grad kernel"]
    return ["forward", "forward+backward"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return dry_run(tmp_path_factory.mktemp("suite"))


def test_every_case_and_provider_is_a_row(suite):
    _, results = suite
    rows = results["rows"]
    expected = [(family, mode, dtype, provider) for dtype in ("float32", "bfloat16") for family in FAMILIES
                for mode in expected_modes(family) for provider in expected_providers(family, mode)]
    assert [(r["family"], r["mode"], r["dtype"], r["provider"]) for r in rows] == expected
    assert set(results["shapes"]) == set(FAMILIES)
    assert results["environment"]["dry_run"] is True and results["environment"]["copy_GBps"] > 0


def test_cpu_rows_are_measured_and_match_float64(suite):
    _, results = suite
    for row in results["rows"]:
        if row["provider"] not in RUN_ON_CPU:
            continue
        where = (row["family"], row["mode"], row["dtype"], row["provider"])
        assert row["status"] == "ok", (where, row["reason"])
        assert row["wall_us"] > 0 and row["gpu_us"] is None and row["host_us"] is None and row["peak_mib"] is None
        if row["provider"] == "kernel.clone()":
            assert row["max_err"] is None
        else:
            assert row["max_err"] < MAX_ERROR[row["dtype"]], where
        if row["provider"] == "cpu":  # bsrops' kernels ran (DPCB's float32 forward: only oneDNN's post-ops)
            assert row["kernels"] or (row["family"].startswith("dpcb"), row["mode"]) == (True, "forward"), where
        else:
            assert row["kernels"] == [], where
        if row["family"].startswith(("blur", "usrnet")):  # traffic and bandwidth
            assert row["traffic_bytes"] > 0
            assert row["GBps"] == pytest.approx(row["traffic_bytes"] / row["wall_us"] / 1e3)
            assert row["pct_copy"] == pytest.approx(100 * row["GBps"] / results["environment"]["copy_GBps"])
        else:
            assert row["traffic_bytes"] is None and row["GBps"] is None, where


def test_speedups_are_against_the_eager_row(suite):
    _, results = suite
    rows = results["rows"]
    for row in rows:
        if row["status"] != "ok":
            continue
        eager_name = "official" if row["family"].startswith("usrnet") else "eager"
        [eager] = [r for r in rows if (r["family"], r["mode"], r["dtype"], r["provider"]) ==
                   (row["family"], row["mode"], row["dtype"], eager_name)]
        assert row["x_eager"] == pytest.approx(eager["wall_us"] / row["wall_us"])
        assert row["x_compiled"] is None  # compiled is skipped in the dry run


def test_what_cannot_run_on_the_cpu_is_skipped_with_the_reason(suite):
    table, results = suite
    reasons = {"compiled": "torch.compile", "cuda": "no CUDA device", "triton": "Triton"}
    for row in results["rows"]:
        if row["provider"] in reasons:
            assert row["status"] == "skipped" and reasons[row["provider"]] in row["reason"], row
            assert row["wall_us"] is None
    for reason in {row["reason"] for row in results["rows"] if row["reason"]}:
        assert reason in table


def test_the_table_has_a_line_per_row(suite):
    table, results = suite
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].split("|")[1].strip() == "family" and len(lines) == 1 + len(results["rows"])
    first = [cell.strip() for cell in lines[1].split("|")[1:-1]]
    assert first[:4] == ["blur per-pixel", "forward", "float32", "eager"] and first[5] == "n/a"  # GPU µs
    for family in FAMILIES:
        assert f"- {family}: " in table  # its shape


def test_a_wrong_kernel_shows_in_max_error(tmp_path, monkeypatch):
    wrong = lambda x, kernel, *args: torch.ops.bsrops.blur_downsample(x, kernel, *args) * 1.01  # noqa: E731
    monkeypatch.setattr(gpu_suite.bsrops, "blur_downsample", wrong)
    _, results = dry_run(tmp_path, "--only", "shared")
    for row in results["rows"]:
        if row["provider"] == "cpu":
            assert row["max_err"] > 5e-3, row
        elif row["provider"] == "eager":
            assert row["max_err"] < MAX_ERROR[row["dtype"]], row


def test_without_cuda_the_suite_asks_for_the_dry_run(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    for args in ([], ["--build"]):
        with pytest.raises(SystemExit, match="no CUDA device.*--dry-run"):
            gpu_suite.main(["--results", str(tmp_path), *args])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="needs a CUDA device and compiled Triton (TRITON_INTERPRET=0)")
def test_on_a_gpu_every_timer_is_measured(tmp_path):
    assert gpu_suite.main(["--results", str(tmp_path), "--only", "blur shared", "--compile", "none"]) == 0
    [results] = tmp_path.glob("gpu-*.json")
    for row in json.loads(results.read_text())["rows"]:
        if row["provider"] == "compiled":
            assert row["status"] == "skipped" and row["reason"] == "--compile none"
            continue
        assert row["status"] == "ok", row
        assert row["wall_us"] > 0 and row["gpu_us"] > 0 and row["host_us"] > 0 and row["peak_mib"] >= 0, row
        assert row["max_err"] < MAX_ERROR[row["dtype"]], row
        if row["provider"] in ("cuda", "triton"):
            assert row["kernels"] and all(name.endswith("." + row["provider"]) for name in row["kernels"]), row
