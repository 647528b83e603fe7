"""A Python interpreter for the policy's code, safe against the code: the tool of tool-integrated reasoning.

Standard library only: copy this file alone into another trainer.

    from sandbox import run_code          # in this project: from extensions.sandbox import run_code
    run_code("print(4831 * 2977)")        # -> '14381887\\n'
    run_code("while True: pass")          # -> 'TimeoutError: the code ran longer than 10 s ...' after 10 s

The protocol of the official SPO/ReTool code (verl recipe/spo agent_loop/), as three small functions the rollout uses:
  `extract_code(text)`          the first <code>```python ...```</code> block of a turn (max_parallel_calls = 1)
  `wrap_last_line(code)`        the last non-empty line wrapped in print(...) unless it starts with "print"
  `interpreter_block(out, n)`   "<interpreter>\\n{out}\\n</interpreter>\\n\\n", out middle-truncated to n characters

`run_code` runs each call in a fresh, stateless `python -I` process in an empty temporary folder with a
cleared environment, and layers what the OS offers (`isolation()` says which layers are active here):
  - resource limits: CPU seconds, address space (1 GiB), file size, open files, and no new processes or
    threads (RLIMIT_NPROC = 0: a fork bomb or os.system fails at the first fork);
  - a wall-clock timeout: the process group is killed, and every call ends with a kill of the group so
    nothing is left behind;
  - output read in chunks and capped (the head and tail are kept): 100 MB of prints cost no memory;
  - a new user + network namespace (Linux): no network interface but loopback, no host capabilities
    (so the limits above bind even when the trainer runs as root);
  - a new mount namespace with a tmpfs of its own as the folder (Linux): what a call writes in all is bounded
    (WRITE_MB, MAX_FILES) and is gone when it ends; where that is not allowed, the parent measures the folder
    every POLL_S seconds and stops the call over the same bounds;
  - Landlock (Linux >= 5.13): reads only below the Python installation and system libraries, writes
    only inside its own folder, no TCP (ABI >= 4), no signals to processes outside itself (ABI >= 6:
    it cannot kill the trainer).
Where a layer is missing (macOS, an old kernel, a container that forbids namespaces) the others still
apply; `isolation()` tells which, and docs/tools.md says what that leaves open.

`run_code_remote` sends the same call to a SandboxFusion server's /run_code endpoint (the official recipe's
sandbox) and returns the same text; `check_server` fails fast when the server is not reachable.
"""
from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

DEFAULT_TIMEOUT = 10.0          # seconds of wall clock per call (--tool-timeout)
MEMORY_MB = 1024                # address-space limit of the interpreter
FILE_MB = 16                    # largest file the code may write
WRITE_MB = 64                   # all its files together: its own tmpfs (else the parent measures and stops it)
MAX_FILES = 4096                # files and folders it may make (so that cleaning up after it is quick)
POLL_S = 0.2                    # how often the parent measures the folder where the call has no tmpfs
TMPFS = True                    # give each call its own tmpfs where the OS allows it (False: the parent's measure)
KEEP_BYTES = 64 * 1024          # of the output, this much of the head and of the tail is kept
KILL_AFTER_BYTES = 8 * 2**20    # more output than this: the process is stopped, the head and tail returned
REMOTE_TRIES = 4                # run_code_remote: attempts when the server resets or refuses the connection

# ============================================================== the protocol (verl recipe/spo agent_loop/)

_CODE = re.compile(r"<code>(.*?)</code>", re.S)


def extract_code(text: str) -> str | None:
    """The first <code>...</code> block of a turn with its markdown fences removed; None when there is none."""
    m = _CODE.search(text)
    if m is None:
        return None
    code = m.group(1).strip()
    if code.startswith("```"):
        code = code.split("\n", 1)[1] if "\n" in code else ""
    if code.rstrip().endswith("```"):
        code = code.rstrip()[:-3]
    return code.strip()


def wrap_last_line(code: str) -> str:
    """As the official tool: the last non-empty line becomes print(line) unless it starts with "print".
    (Taken as it is: an indented last line becomes a syntax error the model sees and learns from.)"""
    lines = code.split("\n")
    for i in range(len(lines) - 1, -1, -1):
        if lines[i] == "":
            continue
        if not lines[i].startswith("print"):
            lines[i] = f"print({lines[i]})"
        break
    return "\n".join(lines)


def interpreter_block(output: str, max_chars: int = 256) -> str:
    """What the model reads back: the output middle-truncated to max_chars, wrapped as the official tool."""
    if len(output) > max_chars:
        half = max_chars // 2
        output = output[:half] + "...(truncated)..." + output[-half:]
    return f"<interpreter>\n{output}\n</interpreter>\n\n"


# ============================================================== the local sandbox

# Runs first inside the fresh interpreter: limits, namespaces, Landlock, then the code in main.py.
_BOOT = r"""
import ctypes, json, os, resource, sys
cfg = json.loads(sys.argv[1])
with open("main.py") as f:
    src = f.read()
done = []
for name, value in cfg["limits"].items():
    try:
        resource.setrlimit(getattr(resource, name), (value, value))
        done.append(name)
    except (ValueError, OSError, AttributeError):
        pass
libc = ctypes.CDLL(None, use_errno=True)
if sys.platform.startswith("linux"):
    CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET = 0x10000000, 0x00020000, 0x40000000
    uid, gid = os.getuid(), os.getgid()       # mapped to themselves below: the kernel checks files as before
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET) == 0:
        done.append("netns")
        try:   # its own size-limited tmpfs as the folder: bounds what the call writes in all, and how many files
            for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", "0 %d 1" % uid),
                               ("/proc/self/gid_map", "0 %d 1" % gid)):
                with open(path, "w") as f:
                    f.write(text)
            here, opts = os.getcwd().encode(), b"size=%dk,nr_inodes=%d,mode=700" % (cfg["write_kb"], cfg["files"])
            if cfg["tmpfs"] and libc.mount(None, b"/", None, 0x4000 | 0x40000, None) == 0 and \
                    libc.mount(b"tmpfs", here, b"tmpfs", 2 | 4 | 8, opts) == 0:     # private; nosuid, nodev, noexec
                os.chdir(here)                        # into the new mount, empty but for the code
                with open("main.py", "w") as f:
                    f.write(src)
                done.append("tmpfs")
        except OSError:
            pass
    elif libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0 or libc.unshare(CLONE_NEWNET) == 0:
        done.append("netns")
    abi = libc.syscall(444, None, 0, 1)                       # landlock_create_ruleset(VERSION)
    if abi >= 1:
        fs_all = (1 << {1: 13, 2: 14, 3: 15, 4: 15}.get(abi, 16)) - 1
        attr = (ctypes.c_uint64 * 3)(fs_all, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)  # TCP; signals, sockets
        size = 8 * (1 if abi < 4 else 2 if abi < 6 else 3)
        fd = libc.syscall(444, ctypes.byref(attr), size, 0)

        class Beneath(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

        def allow(path, rights):
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                return
            if not os.path.isdir(path):
                rights &= 0b100000000000111 | (1 << 15)            # file rights only on a file
            libc.syscall(445, fd, 1, ctypes.byref(Beneath(rights & fs_all, pfd)), 0)
            os.close(pfd)

        for p in cfg["read"]:
            allow(p, 0b1101)                                       # execute, read file, read dir
        allow(os.getcwd(), fs_all)
        if fd >= 0 and libc.prctl(38, 1, 0, 0, 0) == 0 and libc.syscall(446, fd, 0) == 0:   # no_new_privs
            done.append("landlock%d" % abi)
    # seccomp: no fork, clone (processes or threads), exec, signals to others, ptrace -- for root too, whom
    # RLIMIT_NPROC does not bind. Syscall numbers per architecture; x32 numbers on x86_64 are refused too.
    arch = {"x86_64": (0xC000003E, [57, 58, 56, 435, 59, 322, 62, 200, 234, 424, 101, 311]),
            "aarch64": (0xC00000B7, [220, 435, 221, 281, 129, 130, 131, 424, 117, 271])}.get(os.uname().machine)
    if arch is not None:
        F = lambda code, jt, jf, k: (code, jt, jf, k)             # struct sock_filter
        n = len(arch[1])
        prog = [F(0x20, 0, 0, 4), F(0x15, 1, 0, arch[0]), F(0x06, 0, 0, 0x7FFF0000),   # other arch: allow
                F(0x20, 0, 0, 0), F(0x35, n, 0, 0x40000000)]                           # x32: refuse
        prog += [F(0x15, n - i, 0, nr) for i, nr in enumerate(arch[1])]               # listed: refuse
        prog += [F(0x06, 0, 0, 0x7FFF0000), F(0x06, 0, 0, 0x00050000 | 1)]            # allow | EPERM

        class Filter(ctypes.Structure):
            _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                        ("k", ctypes.c_uint32)]

        class Prog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Filter))]

        table = (Filter * len(prog))(*[Filter(*f) for f in prog])
        if libc.prctl(38, 1, 0, 0, 0) == 0 and libc.prctl(22, 2, ctypes.byref(Prog(len(prog), table))) == 0:
            done.append("seccomp")
if cfg["report"]:
    print(json.dumps(done))
    sys.exit(0)
del ctypes, json, resource, libc, cfg, done
sys.argv = ["main.py"]
exec(compile(src, "main.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""


def _limits(timeout: float, memory_mb: int) -> dict:
    return {"RLIMIT_CPU": int(timeout) + 1, "RLIMIT_AS": memory_mb * 2**20, "RLIMIT_FSIZE": FILE_MB * 2**20,
            "RLIMIT_NOFILE": 64, "RLIMIT_CORE": 0, "RLIMIT_NPROC": 0}


def _read_paths() -> list:
    """What the code may read: the Python installation (stdlib, site-packages) and the system libraries."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    paths = prefixes | {os.path.dirname(os.path.realpath(sys.executable))}
    paths |= {p for p in sys.path if p and os.path.isdir(p) and (os.path.basename(p) in ("site-packages", "dist-packages")
              or any(os.path.abspath(p).startswith(x.rstrip("/") + "/") for x in prefixes))}   # not the repo, not ''/cwd
    paths |= {p for p in ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/usr/share/zoneinfo",
                          "/etc/ld.so.cache") if os.path.exists(p)}
    return sorted(paths)


def _spawn(code: str, folder: str, timeout: float, memory_mb: int, report: bool = False) -> subprocess.Popen:
    with open(os.path.join(folder, "main.py"), "w") as f:
        f.write(code)
    env = {"PATH": "/usr/bin:/bin", "HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8",
           "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cfg = {"limits": _limits(timeout, memory_mb), "read": _read_paths(), "report": report,
           "write_kb": WRITE_MB * 1024, "files": MAX_FILES, "tmpfs": TMPFS}
    return subprocess.Popen([sys.executable, "-I", "-c", _BOOT, json.dumps(cfg)], cwd=folder, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, close_fds=True)


def _written_over(folder: str) -> bool:
    """The parent's measure of a call's folder: more than WRITE_MB or MAX_FILES in it? (Where the call has its
    own tmpfs this sees only main.py: the tmpfs is in the call's mount namespace and bounds it there.)"""
    size, n, stack = 0, 0, [folder]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for e in entries:
                    n += 1
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    else:
                        size += e.stat(follow_symlinks=False).st_blocks * 512
                    if n > MAX_FILES or size > WRITE_MB * 2**20:
                        return True
        except OSError:
            pass
    return False


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)      # the session it leads: itself and anything it started
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_code(code: str, timeout: float = DEFAULT_TIMEOUT, memory_mb: int = MEMORY_MB) -> str:
    """Run `code` in a fresh sandboxed interpreter; return what it printed (stdout and stderr, in order), or
    that plus an error line when it ran out of time, was killed by a limit, or printed too much.
    Never raises for anything the code does; at most `timeout` (+ ~0.1 s to start) of wall clock."""
    folder = tempfile.mkdtemp(prefix="spo-sandbox-")
    try:
        proc = _spawn(code, folder, timeout, memory_mb)
        head, tail, total, why = bytearray(), bytearray(), 0, None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    why = f"TimeoutError: the code ran longer than {timeout:g} s and was stopped"
                    break
                if not sel.select(min(left, POLL_S)):
                    if _written_over(folder):
                        why = f"DiskError: the code wrote more than {WRITE_MB} MB or {MAX_FILES} files and was stopped"
                        break
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                total += len(chunk)
                if len(head) < KEEP_BYTES:
                    head += chunk[:KEEP_BYTES - len(head)]
                tail = (tail + chunk)[-KEEP_BYTES:]
                if total > KILL_AFTER_BYTES:
                    why = f"OutputError: more than {KILL_AFTER_BYTES // 2**20} MB of output; the code was stopped"
                    break
        if why is None:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()) + 0.5)
            except subprocess.TimeoutExpired:
                why = f"TimeoutError: the code ran longer than {timeout:g} s and was stopped"
        _kill_group(proc)
        proc.stdout.close()
        out = bytes(head) if total <= KEEP_BYTES else bytes(head) + b"\n...(output cut)...\n" + bytes(tail[-KEEP_BYTES // 2:])
        text = out.decode("utf-8", errors="replace").replace("\x00", "")
        if why is None and proc.returncode < 0:
            sig = signal.Signals(-proc.returncode).name
            why = {"SIGXCPU": f"TimeoutError: CPU time limit ({int(timeout) + 1} s) exceeded",
                   "SIGKILL": "Killed: a resource limit (memory) was exceeded"}.get(sig, f"Killed by {sig}")
        return text + (("\n" if text and not text.endswith("\n") else "") + why if why else "")
    except OSError as e:                          # the trainer's side: no processes left, disk full, ...
        return f"SandboxError: could not run the code ({e})"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def isolation() -> list:
    """The protection layers active on this machine, e.g. ['RLIMIT_CPU', ..., 'netns', 'landlock7']."""
    folder = tempfile.mkdtemp(prefix="spo-sandbox-")
    try:
        proc = _spawn("", folder, DEFAULT_TIMEOUT, MEMORY_MB, report=True)
        out, _ = proc.communicate(timeout=30)
        return json.loads(out.decode().strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ============================================================== SandboxFusion (the official recipe's sandbox)


class SandboxUnavailable(RuntimeError):
    pass


def run_code_remote(code: str, url: str, timeout: float = DEFAULT_TIMEOUT, memory_mb: int = MEMORY_MB) -> str:
    """The same call on a SandboxFusion server (POST {url} with {"code", "language": "python", "run_timeout"}),
    returning the same text as run_code: stdout + stderr, plus an error line when the run did not finish."""
    body = json.dumps({"code": code, "language": "python", "run_timeout": timeout,
                       "memory_limit_MB": memory_mb}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    for attempt in range(REMOTE_TRIES):
        try:
            with urllib.request.urlopen(req, timeout=timeout + 30) as r:
                res = json.loads(r.read())
            break
        except (urllib.error.URLError, OSError, ValueError) as e:
            # a reset or refused connection is the server's trouble, not the code's: the call is stateless, so it
            # is sent again (a server's accept queue overflows under a burst of calls) before it counts as an error
            transient = isinstance(getattr(e, "reason", e), (ConnectionResetError, ConnectionRefusedError))
            if not transient or attempt == REMOTE_TRIES - 1:
                return f"SandboxError: the sandbox server did not answer ({e})"
            time.sleep(0.1 * 2 ** attempt)
    run = res.get("run_result") or {}
    text = (run.get("stdout") or "") + (run.get("stderr") or "")
    status = run.get("status")
    if status == "TimeLimitExceeded":
        return text + f"\nTimeoutError: the code ran longer than {timeout:g} s and was stopped"
    if status is None:
        return text + f"\nSandboxError: {res.get('status')}: {res.get('message', '')}".rstrip(": ")
    return text


def check_server(url: str) -> None:
    """Fail fast, before any training: the server must run print(1 + 1) and answer 2."""
    out = run_code_remote("print(1 + 1)", url, timeout=10)
    if out.strip() != "2":
        raise SandboxUnavailable(f"--sandbox-url {url}: the SandboxFusion server is not usable: {out.strip()[:200]}"
                                 " (start one, e.g. docker run -p 8080:8080 <sandbox-fusion image>, and pass "
                                 "http://HOST:8080/run_code)")
