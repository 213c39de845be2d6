"""The replicated deployment (deploy/k8s, deploy/compose) on one machine, to test and to try.

Redis (the shared state, ``REDIS_URL``), two ``ClipEncoder`` replicas behind an HAProxy
balancer, one ``BlipCaptioner``, and two entry replicas (``service:ClipApi``) behind another
balancer, all on loopback. Each replica runs in a session of its own with its own log,
``BENTOML_HOME``, jobs file and table directories, as on a host of its own: a replica that
sees another's state can only have it from Redis. A test kills any of them (``kill``) and
starts it again on the same port and files (``restart``); the balancers' own view (which
server is up, which served each request) is read from their stats socket and access log.

The balancers do what a cluster's do, no more: round robin, ``/readyz`` health checks a
fraction of a second apart, and a refused connection retried on another replica. A request
in flight on a replica that dies is *not* sent again: what its caller then gets is the
service's to answer (Kubernetes' Services do not retry either).

    python -m clip_service.testing.tiny_models /tmp/models
    python -m clip_service.testing.topology /tmp/models [--label-tables DIR]

Settings in the environment (``MAX_FLAVORS``, ...) reach every replica. ``--label-tables``:
the LABEL_CACHE_DIR of a server on the same model directory (the files are keyed by it);
without it, each encoder builds the tables itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from clip_service.testing.redis_server import RedisServer

PROJECT = Path(__file__).resolve().parents[2]  # service.py and runners/ (bentoml serve's cwd)
ENCODERS = ("encoder-1", "encoder-2")
ENTRIES = ("entry-1", "entry-2")
INSTALL_HINT = "apt-get install -y redis-server haproxy (Debian; .ci/run does this)"

# One balancer: round robin over replicas its health check finds ready (two failed checks
# 0.5 s apart take one out, one passing check puts it back); a refused connection is tried
# 3 times, each time on another replica. A connection per request to the replicas: uvicorn
# closes idle ones after 5 s, and a request sent on one it is closing would fail for a
# reason that is neither the balancer's nor the service's. A caller that hangs up is passed
# on (abortonclose), as an L4 balancer would: without it HAProxy waits for the answer, and
# the model service never learns that nobody wants its work.
HAPROXY_CONFIG = """\
global
    log stdout format raw local0
    stats socket {socket} mode 600 level admin
defaults
    mode http
    log global
    log-format "%s %ST %HM %HU %Tt %tsc"
    option dontlognull
    option http-server-close
    option abortonclose
    retries 3
    option redispatch 1
    timeout connect 1s
    timeout client 10m
    timeout server 10m
    default-server inter 500ms fall 2 rise 1
frontend balancer
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
{servers}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_programs() -> None:
    """Fail, not skip, without Redis or HAProxy: the tier is part of the suite."""
    missing = [p for p in ("redis-server", "haproxy") if shutil.which(p) is None]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not found; install with: {INSTALL_HINT}")


@dataclass
class Replica:
    """One replica (or balancer, or Redis): how to start it, how to tell it is ready, its
    log and, once started, its process."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    ready: Callable[[], bool]
    process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=PROJECT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def processes(self) -> list[psutil.Process]:
        """The replica's processes: BentoML's workers run in sessions of their own, so a
        signal to the process group alone would leave them serving."""
        if self.process is None or self.process.poll() is not None:
            return []
        with contextlib.suppress(psutil.NoSuchProcess):
            leader = psutil.Process(self.process.pid)
            return [leader, *leader.children(recursive=True)]
        return []

    def signal(self, sig: int) -> list[psutil.Process]:
        """Signal every process of the replica; those signalled."""
        found = self.processes()
        for process in found:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(sig)
        return found

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; see {self.log}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout_s:g} s; see {self.log}")
            time.sleep(0.25)

    def stop(self) -> None:
        """SIGTERM to the leader (a replica drains its requests), SIGKILL to every process
        still there after 30 s."""
        found = self.processes()
        if not found:
            return
        found[0].send_signal(signal.SIGTERM)
        _, left = psutil.wait_procs(found, timeout=30)
        for process in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(left, timeout=10)


@dataclass
class Topology:
    """The running deployment: its URLs and replicas (by name: ``redis``, ``encoder-1``,
    ``encoder-2``, ``encoders`` (their balancer), ``captioner``, ``entry-1``, ``entry-2``,
    ``front`` (the entries' balancer))."""

    root: Path
    redis_url: str
    front: str
    entries: dict[str, str]
    encoder_balancer: str
    encoders: dict[str, str]
    captioner: str
    replicas: dict[str, Replica] = field(default_factory=dict)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal every process of a replica; after SIGKILL, return once they have exited
        (their sockets closed: a connection to the replica is refused from then on)."""
        signalled = self.replicas[name].signal(sig)
        if sig == signal.SIGKILL:
            _exited(signalled)

    def restart(self, name: str, timeout_s: float = 180) -> None:
        """Start a replica again on its port, files and log (killing what is left of it)."""
        self.kill(name)
        replica = self.replicas[name]
        replica.start()
        replica.wait_ready(timeout_s)

    def alive(self, name: str) -> bool:
        return bool(self.replicas[name].processes())

    def log(self, name: str) -> str:
        return self.replicas[name].log.read_text(errors="replace")

    def servers(self, balancer: str) -> dict[str, str]:
        """A balancer's view of its replicas: name -> ``UP``, ``DOWN``, ... (its stats)."""
        rows = _haproxy_command(self.root / balancer / "admin.sock", "show stat")
        header, *lines = rows.splitlines()
        columns = header.lstrip("# ").split(",")
        found = {}
        for line in lines:
            row = dict(zip(columns, line.split(","), strict=False))
            if row.get("pxname") == "replicas" and row.get("svname") not in ("BACKEND", None):
                found[row["svname"]] = row["status"]
        return found

    def wait_servers(self, balancer: str, state: Mapping[str, str], timeout_s: float = 30) -> None:
        """Until the balancer sees its replicas as ``state`` says (e.g. ``{"entry-1": "UP"}``)."""
        deadline = time.monotonic() + timeout_s
        while not all(
            self.servers(balancer).get(name, "").startswith(want) for name, want in state.items()
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{balancer}: {self.servers(balancer)}, not {dict(state)}")
            time.sleep(0.1)

    def served(self, balancer: str) -> list[tuple[str, int, str, str]]:
        """(replica, status, method, path) of each request the balancer has logged (its
        log lines also have the total time and HAProxy's termination state)."""
        found = []
        for line in self.log(balancer).splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[1].lstrip("-").isdigit():
                found.append((parts[0], int(parts[1]), parts[2], parts[3]))
        return found

    def stop(self) -> None:
        """Entries first (they drain their requests), then what they call."""
        order = ["front", *ENTRIES, "encoders", *ENCODERS, "captioner", "redis"]
        with ThreadPoolExecutor(len(order)) as pool:
            for group in (order[:3], order[3:]):
                list(pool.map(lambda n: self.replicas[n].stop(), group))


def _exited(processes: list[psutil.Process], timeout_s: float = 30) -> None:
    """Until every process has exited (a zombie has: its sockets are closed)."""

    def running(process: psutil.Process) -> bool:
        with contextlib.suppress(psutil.NoSuchProcess):
            return process.status() != psutil.STATUS_ZOMBIE
        return False

    deadline = time.monotonic() + timeout_s
    while any(running(p) for p in processes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"still running {timeout_s:g} s after SIGKILL: {processes}")
        time.sleep(0.005)


def _haproxy_command(path: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def _http_ready(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


def _socket_ready(path: Path) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return "pxname" in _haproxy_command(path, "show stat")
        except OSError:
            return False

    return ready


def _balancer(name: str, root: Path, port: int, upstream: Mapping[str, str]) -> Replica:
    home = root / name
    home.mkdir(parents=True)
    servers = "\n".join(
        f"    server {n} {url.removeprefix('http://')} check" for n, url in upstream.items()
    )
    config = home / "haproxy.cfg"
    sock = home / "admin.sock"
    config.write_text(HAPROXY_CONFIG.format(socket=sock, port=port, servers=servers))
    command = ["haproxy", "-db", "-f", str(config)]
    return Replica(name, command, dict(os.environ), home / "log", _socket_ready(sock))


def _bentoml(
    name: str, target: str, root: Path, port: int, env: Mapping[str, str], label_tables: Path | None
) -> Replica:
    """A ``bentoml serve`` as on a host of its own: every file it writes is under its home."""
    home = root / name
    home.mkdir(parents=True)
    cache = home / "label-cache"
    cache.mkdir()
    for path in label_tables.glob("*.safetensors") if label_tables else ():
        shutil.copy2(path, cache / path.name)
    own = {
        "BENTOML_HOME": str(home / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "HF_HUB_OFFLINE": "1",
        "SHUTDOWN_QUIET_S": "1",
        "JOBS_DB": str(home / "jobs.sqlite3"),
        "CUSTOM_TABLES_DIR": str(home / "label-lists"),
        "LABEL_CACHE_DIR": str(cache),
        "ONNX_CACHE_DIR": str(home / "onnx-cache"),
    }
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1"]
    url = f"http://127.0.0.1:{port}"
    return Replica(
        name,
        [*command, "--port", str(port)],
        {**os.environ, **own, **env},
        home / "log",
        _http_ready(url),
    )


@contextlib.contextmanager
def topology(
    models: Path,
    root: Path,
    label_tables: Path | None = None,
    env: Mapping[str, str] | None = None,
    replica_env: Mapping[str, Mapping[str, str]] | None = None,
    timeout_s: float = 300,
) -> Iterator[Topology]:
    """Start everything at once, yield when every replica is ready and both balancers see
    all of theirs up; stop everything after.

    ``models``: a directory of :func:`clip_service.testing.tiny_models.make_all`'s (or any
    with ``open-clip`` and ``blip`` model directories); ``label_tables``: built-in label
    tables' files each encoder starts with (else each builds them); ``env``: settings for
    every service replica, ``replica_env``: for one (by name).
    """
    require_programs()
    ports = {name: free_port() for name in ("redis", "encoders", "front", "captioner")}
    ports |= {name: free_port() for name in (*ENCODERS, *ENTRIES)}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    redis_server = RedisServer(root / "redis", ports["redis"])
    redis_url = redis_server.url
    common = {
        "CLIP_MODEL": f"local-dir:{models / 'open-clip'}",
        "CAPTION_MODEL": str(models / "blip"),
        "REDIS_URL": redis_url,
        **(env or {}),
    }
    entry = {"CLIP_ENCODER_URL": url["encoders"], "CAPTIONER_URL": url["captioner"]}

    def service_env(name: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**common, **(extra or {}), **(replica_env or {}).get(name, {})}

    redis = Replica(
        "redis",
        redis_server.command(),
        dict(os.environ),
        root / "redis" / "log",
        redis_server.answers,
    )
    encoders = {n: url[n] for n in ENCODERS}
    entries = {n: url[n] for n in ENTRIES}
    replicas = [
        redis,
        *(
            _bentoml(
                n, "runners.clip_encoder:ClipEncoder", root, ports[n], service_env(n), label_tables
            )
            for n in ENCODERS
        ),
        _bentoml(
            "captioner",
            "runners.blip_captioner:BlipCaptioner",
            root,
            ports["captioner"],
            service_env("captioner"),
            None,
        ),
        _balancer("encoders", root, ports["encoders"], encoders),
        *(
            _bentoml(n, "service:ClipApi", root, ports[n], service_env(n, entry), None)
            for n in ENTRIES
        ),
        _balancer("front", root, ports["front"], entries),
    ]
    running = Topology(
        root=root,
        redis_url=redis_url,
        front=url["front"],
        entries=entries,
        encoder_balancer=url["encoders"],
        encoders=encoders,
        captioner=url["captioner"],
        replicas={r.name: r for r in replicas},
    )
    try:
        redis.start()  # the others keep their state in it from their first request
        redis.wait_ready(30)
        for replica in replicas[1:]:
            replica.start()
        deadline = time.monotonic() + timeout_s
        for replica in replicas[1:]:
            replica.wait_ready(max(1, deadline - time.monotonic()))
        running.wait_servers("encoders", dict.fromkeys(ENCODERS, "UP"))
        running.wait_servers("front", dict.fromkeys(ENTRIES, "UP"))
        yield running
    finally:
        running.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, help="a directory of tiny_models' make_all")
    parser.add_argument("--label-tables", type=Path, help="built-in label tables to start with")
    parser.add_argument("--root", type=Path, help="where the replicas' files go (a new temp dir)")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="clip-topology-"))
    # SIGTERM stops the replicas too (each runs in a session of its own).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with topology(args.models.resolve(), root, args.label_tables) as running:
        print(f"front       {running.front}")
        for name, address in {**running.entries, **running.encoders}.items():
            print(f"{name:<11} {address}")
        print(f"encoders    {running.encoder_balancer}")
        print(f"captioner   {running.captioner}")
        print(f"redis       {running.redis_url}")
        print(f"logs        {root}/*/log   (Ctrl-C stops)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
