"""deploy/compose: the replicated topology as `docker-compose config` resolves it.

The compose file validates without a Docker daemon; the test reads the topology it prints
(services, replicas, the shared state's wiring, what each balancer forwards where) and runs
`haproxy -c` on every balancer config the file mounts. It needs Debian's docker-compose
(1.29.2) and haproxy, which .ci/run installs; it fails, not skips, without them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from clip_service.settings import Settings
from tests.conftest import REPO

COMPOSE = REPO / "deploy" / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yaml"
# Bento services: compose service -> (BentoML service it serves, replicas).
BENTO = {
    "clip-encoder": ("ClipEncoder", 2),
    "blip-captioner": ("BlipCaptioner", 1),
    "clip-api": ("ClipApi", 2),
}
SHARE_STATE = ("clip-api", "clip-encoder")  # jobs on the entries, custom tables on encoders
BALANCERS = ("model-lb", "front-lb")
SERVICES = {"redis", "cache-owner", *BENTO, *BALANCERS}
HF_CACHE = "/var/cache/huggingface"  # HF_HOME of the model services: the volume hf-cache
# The settings whose defaults a user overrides with the environment: the test reads the
# file's own defaults.
SETTINGS = ("CLIP_SERVICE_IMAGE", "CLIP_MODEL", "CAPTION_MODEL", "MODELS_DIR", "PORT")
SETTINGS += ("REDIS_IMAGE", "HAPROXY_IMAGE")


def _require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(
            f"{program} not found: .ci/run installs it "
            "(apt-get install -y docker-compose haproxy, Debian)"
        )
    return path


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict:
    """`docker-compose config`, with no Docker daemon reachable: it must not need one. The
    file's own defaults: none of its settings from the environment or an .env file."""
    no_settings = tmp_path_factory.mktemp("compose") / "empty.env"
    no_settings.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
    result = subprocess.run(
        [
            _require("docker-compose"),
            "--env-file",
            str(no_settings),
            "-f",
            str(COMPOSE_FILE),
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _env(compose: dict, service: str) -> dict[str, str]:
    return compose["services"][service].get("environment", {})


def _port(compose: dict, service: str) -> int:
    """The port a Bento service's `bentoml serve ... --port N` listens on."""
    command = compose["services"][service]["command"]
    return int(command[command.index("--port") + 1])


@dataclass
class Haproxy:
    """What a balancer config binds and forwards: frontend port -> (host, port) servers."""

    path: Path
    text: str
    defaults: list[str] = field(default_factory=list)
    binds: dict[int, str] = field(default_factory=dict)  # port -> backend
    servers: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # backend -> ...
    backend_lines: dict[str, list[str]] = field(default_factory=dict)


def _parse_haproxy(path: Path) -> Haproxy:
    cfg = Haproxy(path, path.read_text())
    section, name, frontends = "", "", {}
    for raw in cfg.text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if not raw[0].isspace():
            section, name = words[0], (words[1] if len(words) > 1 else "")
            if section == "frontend":
                frontends[name] = {"ports": [], "backend": None}
            if section == "backend":
                cfg.servers[name], cfg.backend_lines[name] = [], []
            continue
        if section == "defaults":
            cfg.defaults.append(line)
        elif section == "frontend" and words[0] == "bind":
            frontends[name]["ports"].append(int(words[1].rsplit(":", 1)[1]))
        elif section == "frontend" and words[0] == "default_backend":
            frontends[name]["backend"] = words[1]
        elif section == "backend":
            cfg.backend_lines[name].append(line)
            if words[0] in ("server", "server-template"):
                address = words[3] if words[0] == "server-template" else words[2]
                host, port = address.rsplit(":", 1)
                cfg.servers[name].append((host, int(port)))
    for frontend in frontends.values():
        assert frontend["backend"] in cfg.servers, (path.name, frontend)
        for port in frontend["ports"]:
            cfg.binds[port] = frontend["backend"]
    return cfg


def _balancer_config(compose: dict, service: str) -> Haproxy:
    """The haproxy config the service mounts where its command reads it."""
    spec = compose["services"][service]
    command = spec["command"]
    target = command[command.index("-f") + 1]
    (source,) = [
        Path(volume.split(":")[0]) for volume in spec["volumes"] if volume.split(":")[1] == target
    ]
    assert source.is_file() and source.parent == COMPOSE, source
    return _parse_haproxy(source)


def _forwards(compose: dict, url: str) -> list[tuple[str, int]]:
    """The servers a URL of the compose network reaches through a balancer."""
    parsed = urlparse(url)
    assert parsed.hostname in BALANCERS, url
    cfg = _balancer_config(compose, parsed.hostname)
    assert parsed.port in cfg.binds, (url, cfg.binds)
    return cfg.servers[cfg.binds[parsed.port]]


def test_config_validates_without_a_daemon_and_has_the_topology(compose):
    services = compose["services"]
    assert set(services) == SERVICES
    targets = {}
    for name, (bento_service, replicas) in BENTO.items():
        spec = services[name]
        assert spec.get("scale", 1) == replicas, name
        assert spec["image"] == "clip-service:latest"  # the default; CLIP_SERVICE_IMAGE
        args = spec["command"]
        assert args[:2] == ["bentoml", "serve"] and "--working-dir" in args
        targets[args[2]] = bento_service
    assert _served_names(list(targets)) == list(targets.values())


def _served_names(targets: list[str]) -> list[str]:
    """The BentoML service name of each ``module:attr`` target, imported in a process of
    its own: importing ``service`` here would fix its settings (read at import) for the
    in-process tests that import it later with their own."""
    script = (
        "import importlib, sys\n"
        "for target in sys.argv[1:]:\n"
        "    module, attr = target.split(':')\n"
        "    print(getattr(importlib.import_module(module), attr).name)\n"
    )
    command = [sys.executable, "-c", script, *targets]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_the_state_is_in_one_redis_on_a_persistent_volume(compose):
    services, volumes = compose["services"], compose.get("volumes") or {}
    redis = services["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    # A redis-server other than the redis image's refuses other containers otherwise.
    assert command[command.index("--protected-mode") + 1] == "no"
    data = command[command.index("--dir") + 1]
    (mount,) = [v for v in redis["volumes"] if v.split(":")[1] == data]
    assert mount.split(":")[0] in volumes, f"{mount}: not a named volume"
    port = int(command[command.index("--port") + 1]) if "--port" in command else 6379
    urls = {name: _env(compose, name).get("REDIS_URL") for name in SHARE_STATE}
    assert None not in urls.values(), urls
    assert len(set(urls.values())) == 1, urls
    url = urlparse(urls["clip-api"])
    assert (url.scheme, url.hostname, url.port) == ("redis", "redis", port)
    for name in SHARE_STATE:
        depends = services[name]["depends_on"]["redis"]
        assert depends["condition"] == "service_healthy", name
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_settings_are_real_and_no_state_lives_on_a_replica(compose):
    fields = {name.upper() for name in Settings.model_fields}
    for name in BENTO:
        env = _env(compose, name)
        assert set(env) - {"BENTOML_DO_NOT_TRACK", "HF_HOME"} <= fields, (name, env)
        # With REDIS_URL these are unused; a path here would be state on one replica.
        assert not {"JOBS_DB", "CUSTOM_TABLES_DIR", "LABEL_LISTS_DIR"} & set(env), name
    # The model names must agree across services (the label tables are keyed by them).
    for setting in ("CLIP_MODEL", "CAPTION_MODEL"):
        assert len({_env(compose, name)[setting] for name in BENTO}) == 1, setting


def test_model_services_share_the_weights_on_a_volume_the_image_can_write(compose):
    """HF_HOME on the named volume hf-cache, which cache-owner (root, once, first) hands to
    the image's user: a new volume belongs to root."""
    services, volumes = compose["services"], compose.get("volumes") or {}
    owner = services["cache-owner"]
    assert owner["user"] == "root" and owner.get("restart", "no") == "no"
    assert owner["command"][:2] == ["chown", "1034:1034"]  # the Bento image's bentoml user
    assert f"hf-cache:{HF_CACHE}" in {v.removesuffix(":rw") for v in owner["volumes"]}
    assert HF_CACHE in owner["command"][2:] and "hf-cache" in volumes
    for name in ("clip-encoder", "blip-captioner"):
        assert _env(compose, name)["HF_HOME"] == HF_CACHE, name
        assert f"hf-cache:{HF_CACHE}" in {v.removesuffix(":rw") for v in services[name]["volumes"]}
        after = services[name]["depends_on"]["cache-owner"]["condition"]
        assert after == "service_completed_successfully", name


def test_every_bento_service_is_health_checked_on_readyz(compose):
    for name in BENTO:
        check = compose["services"][name]["healthcheck"]
        probe = " ".join(check["test"])
        assert f"127.0.0.1:{_port(compose, name)}/readyz" in probe, (name, probe)
        assert check["test"][0] in ("CMD", "CMD-SHELL")


def test_the_balancers_forward_to_the_services_they_name(compose):
    """URL -> balancer frontend -> servers: each a compose service on the port it serves."""
    services = compose["services"]
    entry = _env(compose, "clip-api")
    for setting, target in (
        ("CLIP_ENCODER_URL", "clip-encoder"),
        ("CAPTIONER_URL", "blip-captioner"),
    ):
        assert _forwards(compose, entry[setting]) == [(target, _port(compose, target))], setting
    (published,) = services["front-lb"]["ports"]
    assert int(published["published"]) == 3000  # the default; PORT
    front = _balancer_config(compose, "front-lb")
    backend = front.binds[int(published["target"])]
    assert front.servers[backend] == [("clip-api", _port(compose, "clip-api"))]
    for name in BALANCERS:
        assert not services[name].get("ports") or name == "front-lb", name
        for servers in _balancer_config(compose, name).servers.values():
            for host, port in servers:
                assert host in BENTO and port == _port(compose, host), (name, host, port)
                assert host in services[name].get("depends_on", {}), (name, host)


def _timeout_s(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 0.001}[unit]


def test_the_balancers_check_readyz_retry_elsewhere_and_wait_for_interrogations(compose):
    request_timeout_s = Settings.model_fields["request_timeout_s"].default
    for name in BALANCERS:
        cfg = _balancer_config(compose, name)
        for backend, lines in cfg.backend_lines.items():
            lines = cfg.defaults + lines
            assert "option httpchk GET /readyz" in lines, (cfg.path.name, backend)
            assert "http-check expect status 200" in lines, (cfg.path.name, backend)
            assert any(re.fullmatch(r"retries [1-9]\d*", line) for line in lines)
            assert any(re.fullmatch(r"option redispatch( \S+)?", line) for line in lines)
            server_lines = [line for line in lines if line.split()[0].startswith("server")]
            assert server_lines and all(" check" in line for line in server_lines)
            # Every server may start after the balancer (and be replaced): resolved at
            # run time, not only when haproxy starts.
            default_server = " ".join(line for line in lines if line.startswith("default-"))
            assert "resolvers " in default_server and "init-addr none" in default_server
            timeouts = {
                line.split()[1]: _timeout_s(line.split()[2])
                for line in lines
                if line.startswith("timeout ")
            }
            for side in ("client", "server"):
                assert timeouts[side] > request_timeout_s, (cfg.path.name, side, timeouts)


def test_every_balancer_config_passes_haproxy_check(compose):
    """`haproxy -c`: the service names do not resolve here, and need not (init-addr none)."""
    haproxy = _require("haproxy")
    mounted = {_balancer_config(compose, name).path for name in BALANCERS}
    assert mounted == set(COMPOSE.glob("haproxy-*.cfg"))
    for path in sorted(mounted):
        result = subprocess.run(
            [haproxy, "-c", "-f", str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"{path.name}: {result.stdout}{result.stderr}"
