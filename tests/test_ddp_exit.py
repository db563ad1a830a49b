"""A torchrun (gloo) run of bsr.train leaves no gloo thread behind when main() returns.

A gloo worker thread drops the tensors of its last collective after wait() has returned, and
that takes the GIL: if the interpreter is finalizing by then, the thread dies inside a noexcept
destructor and the rank aborts with "terminate called without an active exception" (a rare
race, likelier under load). bsr.train destroys the process group before exiting, which joins those
threads, provided nothing pins the group (bsr/engine.py: distributed_setup). The abort itself
is a race; this checks its precondition deterministically."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RANK_SCRIPT = r'''
import json, os, sys
from bsr import engine, train

def threads():
    return sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))

during = []
setup = engine.distributed_setup
def recording_setup(device):
    out = setup(device)
    during.extend(threads())
    return out
engine.distributed_setup = recording_setup
status = train.main(sys.argv[1:])
with open(f"threads-rank{os.environ['RANK']}.json", "w") as f:  # a file per rank: their stdout lines interleave
    json.dump({"rank": os.environ["RANK"], "status": status, "during": during, "after": threads()}, f)
'''


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread names from /proc")
def test_ddp_run_joins_gloo_threads_before_exit(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         "usrnet", "--preset", "smoke", "--set", "train.iters=1", "--set", "train.batch_size=2", "--device", "cpu", "--no-eval",
         "--out", str(tmp_path / "run")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("threads-rank*.json"))]
    assert sorted(r["rank"] for r in reports) == ["0", "1"], result.stdout[-3000:]
    for report in reports:
        assert report["status"] == 0
        assert any("gloo" in name for name in report["during"]), report  # the check below is not vacuous
        assert not [name for name in report["after"] if "gloo" in name], report
