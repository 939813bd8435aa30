"""The child processes that the test fixtures and the benchmarks (bench/) start: the fake Anthropic
server, workers, Daphne, beat.

The one copy lives here rather than in bench/ because the benchmarks already build on the test tree
(they run tests.fakes.anthropic_server) and the suite should not depend on the benchmarks. It is a
plain module rather than part of conftest.py so that a benchmark can import it without pytest and
without the fixtures.
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process with its output in a log file.

    It gets a session of its own: a Ctrl-C on the terminal reaches only the parent, which stops its
    children itself, and stop() and kill() reach whatever the child started in turn.
    """

    def __init__(self, name: str, argv: list[str], env: dict, log_dir: Path, cwd: Path = ROOT):
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Process":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL, as a crash would: no cleanup runs."""
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM, as a deploy sends it, without waiting for the exit."""
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 15) -> None:
        if not self.alive:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def wait_ready(predicate, *, what: str, processes: list[Process], timeout: float):
    """Poll predicate() until it returns something truthy, and return that. Raises RuntimeError on
    timeout, and as soon as one of `processes` has died rather than after the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            process.ensure_alive()
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
