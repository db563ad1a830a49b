"""The distribution `bsrops` as a user gets it: the sdist holds every source and header the
build needs, the wheel holds the method configs, a wheel built from the sdist installs into a
fresh virtualenv and trains and runs the native kernels there (outside this source tree), and
a broken native build says what failed (and fails the install under BSROPS_REQUIRE_EXT=1).

Speed (2 cores): the wheel is built with --no-build-isolation against this environment's
torch and with BSROPS_EXTRA_CFLAGS="-O1 -g0" (the -O3 build takes minutes; the optimisation
level is not what this test checks); the fresh virtualenv gets torch, numpy, ... through a
.pth file naming this environment's site-packages, after pip has installed the wheel itself.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAME = "bsrops"
SOURCE_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".cu")
QUICK_CFLAGS = "-O1 -g0"
# what a user's build environment would not hold; everything else of the working tree is copied
EXCLUDE = (".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", "*.so", "*.o", ".pytest_cache",
           ".benchmarks", ".ninja*")


def build_env(**overrides):
    """The environment of the build and install steps: this environment's tools (pip, ninja)
    first on PATH, no PYTHONPATH (nothing from the source tree leaks in)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("MAX_JOBS", "2")
    env.update(overrides)
    return {key: value for key, value in env.items() if value is not None}


def run(args, cwd, env, timeout=600, check=True):
    started = time.perf_counter()
    result = subprocess.run([str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    print(f"[{time.perf_counter() - started:6.1f} s] {' '.join(map(str, args))}")
    if check:
        assert result.returncode == 0, f"{args} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def export_tree(destination):
    """The working tree as a fresh checkout of it would be: tracked and untracked files that git
    does not ignore (or, without git, the tree less the usual build products)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(ROOT, destination, ignore=shutil.ignore_patterns(*EXCLUDE))
        return destination
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a deleted but still tracked file is not in the checkout
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def build_sdist(project, out_dir, env):
    """The PEP 517 sdist hook of the project's backend (what `python -m build --sdist -n` calls)."""
    code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    result = run([sys.executable, "-c", code, out_dir], cwd=project, env=env)
    return Path(out_dir) / result.stdout.strip().splitlines()[-1]


def build_wheel(sdist, out_dir, env):
    """pip builds one wheel from the sdist file (unpacked in pip's own temporary directory)."""
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q",
         "-w", out_dir, sdist], cwd=out_dir, env=env)
    wheels = sorted(Path(out_dir).glob(f"{NAME}-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def sdist_names(sdist):
    with tarfile.open(sdist) as archive:
        names = [member.name for member in archive.getmembers() if member.isfile()]
    top = {name.split("/", 1)[0] for name in names}
    assert len(top) == 1, top
    return {name.split("/", 1)[1] for name in names}


def extension_sources(project, env):
    """The sources setup.py hands to the extension (run with setup() captured, no build)."""
    code = ("import json, runpy, setuptools\n"
            "captured = {}\n"
            "setuptools.setup = lambda **kwargs: captured.update(kwargs)\n"
            "runpy.run_path('setup.py', run_name='__main__')\n"
            "print(json.dumps([s for e in captured.get('ext_modules', []) for s in e.sources]))\n")
    return json.loads(run([sys.executable, "-c", code], cwd=project, env=env).stdout.strip().splitlines()[-1])


def include_closure(sources, root):
    """`sources` and every local file they #include "..." (transitively), relative to `root`."""
    needed, pending = set(), [root / source for source in sources]
    while pending:
        path = pending.pop().resolve()
        rel = path.relative_to(root).as_posix()
        if rel in needed:
            continue
        needed.add(rel)
        for include in re.findall(r'^\s*#\s*include\s*"([^"]+)"', path.read_text(), flags=re.M):
            target = path.parent / include
            if target.is_file():  # else a quoted header of torch or the system
                pending.append(target)
    return needed


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return export_tree(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def sdist(project, tmp_path_factory):
    # BSROPS_NO_EXT=1: setup.py lists no extension sources, so MANIFEST.in alone must carry them
    env = build_env(BSROPS_NO_EXT="1", BSROPS_REQUIRE_EXT="0")
    return build_sdist(project, tmp_path_factory.mktemp("sdist"), env)


def test_sdist_holds_every_source_and_header_the_build_needs(project, sdist):
    names = sdist_names(sdist)
    sources = extension_sources(project, build_env(BSROPS_REQUIRE_EXT="0"))
    assert "csrc/bsrops.cpp" in sources and any(s.endswith("_cpu.cpp") for s in sources), sources
    # the CUDA build's sources too (setup.py adds them only where nvcc is found)
    all_sources = set(sources) | {p.relative_to(project).as_posix() for p in (project / "csrc").rglob("*")
                                  if p.suffix in SOURCE_SUFFIXES}
    needed = include_closure(sorted(all_sources), project.resolve())
    assert {"csrc/common/call_counter.h", "csrc/common/cpu_isa.h"} <= needed  # what the old sdist lacked
    assert not needed - names, f"the sdist lacks {sorted(needed - names)}"
    assert {"setup.py", "pyproject.toml", "README.md", "MANIFEST.in"} <= names
    configs = {p.relative_to(project).as_posix() for p in (project / "bsr" / "configs").glob("*.yaml")}
    assert configs and configs <= names
    assert not [name for name in names if name.endswith((".so", ".o", ".pyc"))]


def test_pure_wheel_holds_the_packages_and_the_configs(project, sdist, tmp_path):
    """A wheel without the native build (seconds): every module of bsrops and bsr and bsr/configs/*.yaml."""
    wheel = build_wheel(sdist, tmp_path, build_env(BSROPS_NO_EXT="1", BSROPS_REQUIRE_EXT="0"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(project).as_posix() for package in ("bsrops", "bsr")
                for p in (project / package).rglob("*") if p.suffix in (".py", ".yaml")}
    assert any(name.startswith("bsr/configs/") for name in expected)
    assert not expected - names, f"the wheel lacks {sorted(expected - names)}"
    metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
    assert re.search(r"^Name: bsrops$", zipfile.ZipFile(wheel).read(metadata).decode(), flags=re.M)


def _fresh_venv(path, wheel):
    """A virtualenv without the dependencies; pip installs the wheel file into it, then a .pth
    lends it this environment's site-packages (torch, numpy, PyYAML, ...) behind its own."""
    base_python = getattr(sys, "_base_executable", sys.executable)
    run([base_python, "-m", "venv", "--without-pip", path], cwd=path.parent, env=build_env())
    python = path / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--no-cache-dir",
         "-q", wheel], cwd=path.parent, env=build_env())
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=path.parent,
                  env=build_env()).stdout.strip()
    lent = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "_bsrops_test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(lent)))
    return python


OP_CHECK = """
import sys, torch, bsr, bsrops
from bsrops.reference.blur_downsample import blur_downsample_reference
for module in (bsr, bsrops):
    assert module.__file__.startswith(sys.prefix), (module.__file__, sys.prefix)
info = bsrops.backend_info("cpu")
assert info["backend"] == "cpu" and info["extension"]["loaded"], info
x = torch.rand(2, 3, 24, 20, dtype=torch.float64)
kernel = torch.softmax(torch.randn(2, 7 * 7, 6, 5, dtype=torch.float64), dim=1)
before = bsrops.kernel_calls()
y = bsrops.blur_downsample(x, kernel, stride=4, padding="reflect")
calls = {k: v - before.get(k, 0) for k, v in bsrops.kernel_calls().items() if v != before.get(k, 0)}
assert calls == {"blur_downsample.cpu": 1}, calls
torch.testing.assert_close(y, blur_downsample_reference(x, kernel, stride=4, padding="reflect"))
print("native blur_downsample OK", bsrops.__file__)
"""


@pytest.mark.slow
def test_wheel_from_the_sdist_installs_and_runs_outside_the_tree(sdist, tmp_path):
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler.split()[0]) is None:
        pytest.skip(f"no C++ compiler ({compiler!r} not on PATH): the wheel's native extension cannot be built")
    started = time.perf_counter()
    wheel_dir = tmp_path / "wheel"
    wheel_dir.mkdir()
    wheel = build_wheel(sdist, wheel_dir, build_env(BSROPS_REQUIRE_EXT="1", BSROPS_EXTRA_CFLAGS=QUICK_CFLAGS,
                                                    BSROPS_NO_EXT=None))
    names = zipfile.ZipFile(wheel).namelist()
    assert [name for name in names if re.fullmatch(r"bsrops/_C\..*(so|pyd)", name)], names
    assert [name for name in names if name.startswith("bsr/configs/") and name.endswith(".yaml")], names

    python = _fresh_venv(tmp_path / "venv", wheel)
    elsewhere = tmp_path / "elsewhere"  # cwd outside the source tree: `import bsr` must find the installed one
    elsewhere.mkdir()
    env = build_env(BSROPS_REQUIRE_EXT="1", OMP_NUM_THREADS="1")
    run([python, "-c", OP_CHECK], cwd=elsewhere, env=env)
    stdout = run([python, "-m", "bsr.train", "usrnet", "--preset", "smoke", "--out", elsewhere / "run"],
                 cwd=elsewhere, env=env).stdout
    assert "PSNR-RGB" in stdout and (elsewhere / "run" / "checkpoints" / "last.pt").exists()
    print(f"sdist -> wheel -> fresh venv -> train + op: {time.perf_counter() - started:.1f} s")


def _broken_project(path):
    """setup.py with the real csrc/bsrops.cpp but without the local header it includes (the
    old sdist's failure); returns that header's name."""
    (path / "csrc").mkdir(parents=True)
    shutil.copy2(ROOT / "setup.py", path / "setup.py")
    source = (ROOT / "csrc" / "bsrops.cpp").read_text()
    local = re.search(r'^\s*#\s*include\s*"([^"]+)"', source, flags=re.M)
    missing = local.group(1) if local else "bsrops_missing_header.h"
    (path / "csrc" / "bsrops.cpp").write_text(source if local else f'#include "{missing}"\n{source}')
    assert not (path / "csrc" / missing).exists()
    return missing


def test_broken_build_fails_the_install_under_require_ext_naming_what_failed(tmp_path):
    if shutil.which(os.environ.get("CXX", "c++").split()[0]) is None:
        pytest.skip("no C++ compiler on PATH: a compile error cannot be produced")
    missing = _broken_project(tmp_path / "project")
    result = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
                  "-w", tmp_path / "wheel", tmp_path / "project"], cwd=tmp_path,
                 env=build_env(BSROPS_REQUIRE_EXT="1"), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "bsrops._C was not built" in output, output[-3000:]
    assert re.search(rf"csrc/bsrops\.cpp:\d+:\d+: fatal error: {re.escape(missing)}", output), output[-3000:]
    assert not list((tmp_path / "wheel").glob("*.whl"))


def test_broken_build_without_require_ext_falls_back_and_says_what_failed(tmp_path):
    if shutil.which(os.environ.get("CXX", "c++").split()[0]) is None:
        pytest.skip("no C++ compiler on PATH: a compile error cannot be produced")
    missing = _broken_project(tmp_path)
    result = run([sys.executable, "setup.py", "-q", "build_ext"], cwd=tmp_path,
                 env=build_env(BSROPS_REQUIRE_EXT="0"))
    line = next(line for line in result.stderr.splitlines() if "native build FAILED" in line)
    assert "in csrc/bsrops.cpp" in line and missing in line and "reference kernels" in line, line
    assert "install a C++ compiler" not in line.lower() and "no c++ compiler" not in line.lower()


def test_missing_compiler_falls_back_or_fails_with_that_reason(tmp_path):
    _broken_project(tmp_path)
    env = build_env(CXX=str(tmp_path / "no-such-c++"))
    tolerant = run([sys.executable, "setup.py", "-q", "build_ext"], cwd=tmp_path, env={**env, "BSROPS_REQUIRE_EXT": "0"})
    assert "no C++ compiler" in tolerant.stderr and "no-such-c++" in tolerant.stderr, tolerant.stderr
    required = run([sys.executable, "setup.py", "-q", "build_ext"], cwd=tmp_path,
                   env={**env, "BSROPS_REQUIRE_EXT": "1"}, check=False)
    assert required.returncode != 0 and "no C++ compiler" in required.stderr, required.stderr[-2000:]
