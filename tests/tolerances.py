"""Tolerances of every test, in one place (the policy: docs/ops.md)."""
import torch

FLOAT64_ATOL = 1e-10  # absolute, on unit-scale data
FLOAT32_RTOL = 1e-5  # relative error (max |a - b| / max |b|)
LOW_PRECISION_FACTOR = 2.0  # fp16/bf16: error vs float64 <= 2x the reference op's own error in that dtype


def relative_error(actual, expected):
    expected = expected.double()
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def assert_close_to_float64(actual, expected64, dtype=None, reference_same_dtype=None):
    """Compare a result against the float64 ground truth with the tolerance of its dtype.

    For float16/bfloat16 `reference_same_dtype` (the reference op run in that dtype) sets the bar.
    """
    dtype = dtype or actual.dtype
    if dtype == torch.float64:
        error = (actual - expected64).abs().max().item() if actual.numel() else 0.0
        assert error <= FLOAT64_ATOL, f"float64 error {error:.3e} > {FLOAT64_ATOL}"
    elif dtype == torch.float32:
        error = relative_error(actual, expected64) if actual.numel() else 0.0
        assert error <= FLOAT32_RTOL, f"float32 relative error {error:.3e} > {FLOAT32_RTOL}"
    else:
        assert reference_same_dtype is not None, "low-precision checks need the reference run in that dtype"
        error = (actual.double() - expected64).abs().max().item()
        bar = (reference_same_dtype.double() - expected64).abs().max().item()
        assert error <= LOW_PRECISION_FACTOR * bar + 1e-12, f"{dtype} error {error:.3e} > 2 x reference's {bar:.3e}"
