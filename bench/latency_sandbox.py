"""A loopback sandbox server whose tool calls take long-tailed wall time (bench/async_speedup.py).

It speaks SandboxFusion's `/run_code` schema, so `--sandbox-url` reaches it as it would the official recipe's
sandbox (sandbox.run_code_remote):

    POST /run_code {"code", "run_timeout", ...}  runs the code in the project's sandbox (sandbox.run_code) and
        answers {"status": "Success", "run_result": {"status": "Finished", "stdout": <its output>}} once the
        call's latency has passed: a draw from the log-normal fitted to the paper's Fig. 4b rollout times
        (bench/agentic_sim.py: median 170 s, sigma 0.83), times `scale`. The handler thread sleeps: a slow
        tool is wall time that costs the trainer's machine no CPU. The code itself runs at most
        `code_timeout` seconds whatever `run_timeout` says: the client raises run_timeout to wait out the
        latency's tail, and code that loops must not spend those seconds of CPU.
    POST /latency {"on": bool, "seed": int}  turns the latency on or off and restarts the draws from `seed`
        (the bench turns it on for the training loop only: the offline init and the evaluations are not timed).

    with LatencySandbox(scale=0.03) as box:      # a thread of the calling process, 127.0.0.1 only
        python train.py ... --sandbox-url box.url
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from agentic_sim import FIG4B_DRAWS  # noqa: E402
from extensions.sandbox import DEFAULT_TIMEOUT, run_code  # noqa: E402

MU, SIGMA = float(np.log(FIG4B_DRAWS).mean()), float(np.log(FIG4B_DRAWS).std(ddof=1))


def latencies(scale: float, seed: int, n: int) -> np.ndarray:
    """The server's first n latency draws (seconds) after a reseed: the same ones agentic_sim's model uses."""
    return scale * np.random.default_rng(seed).lognormal(MU, SIGMA, n)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, backlog: int):
        self.request_queue_size = backlog     # read by listen(): socketserver's default 5 resets connections
        super().__init__(address, handler)    # when a batch's calls arrive at once


class LatencySandbox:
    def __init__(self, scale: float, seed: int = 0, on: bool = True, backlog: int = 1024,
                 code_timeout: float = DEFAULT_TIMEOUT):
        self.scale, self.on, self.calls, self.code_timeout = scale, on, 0, code_timeout
        self.lock, self.rng = threading.Lock(), np.random.default_rng(seed)
        self.server = _Server(("127.0.0.1", 0), self._handler(), backlog)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/run_code"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def draw(self) -> float:
        with self.lock:
            self.calls += 1
            return self.scale * float(self.rng.lognormal(MU, SIGMA)) if self.on else 0.0

    def _handler(self):
        box = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                try:
                    req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                except ValueError:
                    return self._send(400, {"status": "Failed", "message": "the body is not JSON"})
                if self.path == "/latency":
                    with box.lock:
                        box.on = bool(req.get("on", True))
                        box.rng = np.random.default_rng(int(req.get("seed", 0)))
                    return self._send(200, {"on": box.on})
                if self.path != "/run_code":
                    return self._send(404, {"status": "Failed", "message": f"no route {self.path}"})
                t0, wait = time.time(), box.draw()
                timeout = min(float(req.get("run_timeout", DEFAULT_TIMEOUT)), box.code_timeout)   # the latency is the server's
                out = run_code(str(req.get("code", "")), timeout=timeout)
                time.sleep(max(0.0, wait - (time.time() - t0)))     # the call's latency, the run included
                self._send(200, {"status": "Success", "run_result": {"status": "Finished", "stdout": out, "stderr": ""}})

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):                             # quiet
                pass
        return Handler


def set_latency(url: str, on: bool, seed: int = 0) -> None:
    """Turn a LatencySandbox's latency on or off (from another process: the bench's training child)."""
    import urllib.request
    req = urllib.request.Request(url.rsplit("/", 1)[0] + "/latency", data=json.dumps({"on": on, "seed": seed}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read())["on"] == on
