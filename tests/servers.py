"""Real servers for tests: started on a free 127.0.0.1 port, waited for, always stopped."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

SERVER_START_S = 180  # cold start on a busy 2-core machine: imports torch, mlflow and the model
READY_POLL_S = 0.1  # a refused connection costs microseconds: a 1 s poll waited 0.5 s per start for nothing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(**extra: str) -> dict[str, str]:
    """This interpreter's environment with its bin folder first on PATH (mlflow spawns tools from it)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}


@contextmanager
def running_server(argv: Callable[[int], list[str]], ready_path: str, cwd: Path, env: dict[str, str],
                   log_path: Path) -> Iterator[tuple[int, str]]:
    """Start `argv(port)` in its own process group, wait until GET `ready_path` answers, yield
    (port, that answer's body), then stop the whole group (SIGTERM, SIGKILL after 30 s). A
    server that dies or does not answer within SERVER_START_S fails with the end of its log."""
    port = free_port()
    with log_path.open("w") as log:
        server = subprocess.Popen(argv(port), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            deadline = time.time() + SERVER_START_S
            while True:
                assert server.poll() is None, log_path.read_text()[-3000:]
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=5) as response:
                        if response.status == 200:
                            body = response.read().decode()
                            break
                except OSError:
                    pass
                assert time.time() < deadline, "server did not start: " + log_path.read_text()[-3000:]
                time.sleep(READY_POLL_S)
            yield port, body
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
