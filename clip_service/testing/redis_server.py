"""A real ``redis-server`` on a loopback port for tests and by-hand runs: Debian's package
(``.ci/run`` installs it), persisting to an append-only file in its own directory, so a
restart on the same directory keeps what was written over a second before a kill."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MISSING = "redis-server is not installed: `.ci/run` installs Debian's redis-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RedisServer:
    directory: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The server's command line: loopback, append-only file in ``directory``."""
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(MISSING)
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.directory), "--appendonly", "yes", "--save", ""]
        return [*command, "--appendfsync", "everysec", "--daemonize", "no"]

    def start(self) -> None:
        """Start it (again, on the same directory and port) and wait until it answers."""
        command = self.command()
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: see {self.directory}/redis.log")
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(10)

    def answers(self) -> bool:
        """Whether it answers ``PING``."""
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), 1) as s,
        ):
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """A started server, stopped (SIGTERM) when done."""
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.kill(signal.SIGTERM)
