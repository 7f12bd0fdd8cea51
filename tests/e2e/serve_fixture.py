"""A real `peregrine serve` on a free loopback port, for the server tests.

start_server(bin, model, *extra_args) launches it with --port 0, reads the bound port from its
start-up line on stderr, waits for /health and returns a Server; server.stop() sends SIGTERM and
waits for the exit code. Everything is bounded in time: a server that does not come up fails the
test with its stderr tail.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 60.0


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr_tail(self) -> str:
        return "".join(self.stderr_lines[-40:])

    def metrics(self, api_key: str | None = None) -> dict[str, float]:
        """The Prometheus samples as {'name{labels}': value}."""
        req = urllib.request.Request(self.base_url + "/metrics")
        if api_key:
            req.add_header("Authorization", f"Bearer {api_key}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return parse_metrics(r.read().decode())

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"server did not exit within {timeout} s of SIGTERM\n{self.stderr_tail()}")
        return self.proc.returncode


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as {'name{labels}': value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def start_server(peregrine_bin: Path, model: Path, *extra: str, start_timeout: float = START_TIMEOUT) -> Server:
    cmd = [str(peregrine_bin), "serve", "-m", str(model), "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, errors="replace")
    lines: list[str] = []
    port_box: list[int] = []
    ready = threading.Event()

    def pump() -> None:
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"on http://[^:]+:(\d+)", line)
            if m and not port_box:
                port_box.append(int(m.group(1)))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(start_timeout) or not port_box:
        proc.kill()
        proc.wait()
        raise AssertionError(f"server did not start: {' '.join(cmd)}\n{''.join(lines[-40:])}")
    server = Server(proc, port_box[0], lines)
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(server.base_url + "/health", timeout=5) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server never answered /health\n{server.stderr_tail()}")


def threads_arg() -> list[str]:
    return ["-t", os.environ.get("PEREGRINE_TEST_THREADS", "2")]
