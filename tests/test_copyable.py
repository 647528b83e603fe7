"""The modules the README says can be copied alone import nothing from the project, and run from a copy in an
empty folder; examples/minimal_spo.py, the porting pattern built from them, runs and learns."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = {f[:-3] for d in (ROOT, os.path.join(ROOT, "extensions")) for f in os.listdir(d) if f.endswith(".py")} \
    | {"extensions"}
PATHS = {"segment": "extensions/segment.py", "sandbox": "extensions/sandbox.py"}   # the rest at the top level
COPYABLE = {  # module -> a line that uses it, run from the copy (numbers by hand: rho = 0.96 on a first visit;
    # advantages +-0.5 normalised by their unbiased std sqrt(0.5))
    "tracker": "t = tracker.ValueTracker(); t.update(['x'], [1.0]); assert abs(t.value(['x'])[0] - 1.48 / 1.96) < 1e-12",
    "sampler": "s = sampler.PrioritizedSampler(0); assert len(set(s.sample(sampler.priority_weights([.5] * 9), 4))) == 4",
    "spo": "a = spo.spo_advantages([1., 0.], [.5, .5]).tolist(); assert abs(a[0] - 0.5 ** 0.5) < 1e-6 and a[1] == -a[0]",
    "segment": "assert segment.chain_advantages([0.5, 0.75, 1.0]) == [0.25, 0.25]",
    "sandbox": "assert sandbox.run_code('print(6 * 7)', timeout=10).strip() == '42'",
    "rewards": "assert rewards.RewardFn()('so \\\\boxed{1/2}', '0.5') == 1.0",
}


def path(module: str) -> str:
    return os.path.join(ROOT, PATHS.get(module, module + ".py"))


def imported(module: str) -> set:
    tree = ast.parse(open(path(module)).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", sorted(COPYABLE))
def test_module_imports_nothing_from_the_project_and_runs_alone(module, tmp_path):
    assert not imported(module) & PROJECT, f"{module}.py imports {sorted(imported(module) & PROJECT)}"
    shutil.copy(path(module), tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = f"import sys; sys.path = [{str(tmp_path)!r}] + [p for p in sys.path if p not in ('', {ROOT!r})]; " \
           f"import {module}; " \
           f"assert {module}.__file__.startswith({str(tmp_path)!r}); {COPYABLE[module]}"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_project_imports_are_what_the_test_checks():
    """The AST check sees the imports it must: trainer.py's project imports are found (else the test above is void)."""
    assert {"tracker", "sampler", "spo", "rollout", "logprobs"} <= imported("trainer")


def test_minimal_example_runs_and_learns():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "minimal_spo.py")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    start = float(r.stdout.split("start: mean success ")[1].split(",")[0])
    final = float(r.stdout.split("final mean success ")[1].split(";")[0])
    assert final > start + 0.2, r.stdout                       # the toy policy learns under SPO
    assert "mean D 0.0000" not in r.stdout.splitlines()[-2], r.stdout   # the drift is measured, not left at 0
