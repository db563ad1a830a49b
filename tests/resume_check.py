"""Exact-resume checks: training 4 iterations at once and 2 + 2 with --resume give the same weights."""
import torch

from bsr import config
from bsr.engine import Engine


def run_split_and_once(tmp_path, method, overrides, before_resume=None):
    """Train `method`'s smoke preset 4 iterations, and 2 then resumed to 4; returns both last checkpoints.
    `before_resume()` runs between the two halves (e.g. to forbid recomputing checkpointed state)."""
    def cfg(iters):
        return config.load(method, "smoke", overrides=list(overrides) + [f"train.iters={iters}", "train.val_every=0",
                                                                         "train.save_every=2"])

    Engine(cfg(4), str(tmp_path / "once")).train()
    Engine(cfg(2), str(tmp_path / "split")).train()
    if before_resume:
        before_resume()
    assert Engine(cfg(4), str(tmp_path / "split"), resume=True).train() == "done"
    once, split = (torch.load(tmp_path / run / "checkpoints/last.pt", weights_only=True) for run in ("once", "split"))
    assert once["step"] == split["step"] == 4
    assert_same_state(once["nets"], split["nets"])
    return once, split


def assert_same_state(a, b):
    """Two {network: state dict} mappings hold equal tensors under the same names."""
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
