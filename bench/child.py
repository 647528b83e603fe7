"""Each benchmark arm in its own process: a fresh torch (and vLLM), no state leaking between arms.

The parent calls `run_child(script, *args)`; the child, started as `python script *args`, ends with
`emit(result)`; the parent gets the result dict back, or stops with the child's output tail.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def run_child(script: str, *args) -> dict:
    args = [str(x) for x in args]
    r = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{os.path.basename(script)} {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])
