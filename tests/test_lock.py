"""The install is locked: one lock (uv.lock) for the whole tree, its exports current, and
every way of installing (the README's commands, CI, the Bentos) reading those exports.

These fail when pyproject.toml changes without a re-lock, when the hooks' version gate and
the lock disagree (a fresh install would refuse to start), or when an install path goes
back to resolving packages at install time.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from clip_service.process.hooks import WRITTEN_FOR
from tests.conftest import REPO

LOCK = tomllib.loads((REPO / "uv.lock").read_text())
LOCKED = {package["name"]: package["version"] for package in LOCK["package"]}
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for line in requirements:
        requirement = Requirement(line.split(";")[0].split("#")[0])
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{line}: not an exact pin"
        out[requirement.name.lower()] = spec.version
    return out


def exported(name: str) -> dict[str, list[str]]:
    """An export's packages and their hash lines."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in (REPO / "requirements" / name).read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9][\w.-]*)==", line):
            current = match[1].lower()
            blocks[current] = []
        elif current and "--hash=sha256:" in line:
            blocks[current].append(line.strip())
    return blocks


def test_the_exports_are_those_of_the_lock():
    """requirements/*.txt are what `uv export` writes from uv.lock (offline: no resolution)."""
    checked = subprocess.run(
        [sys.executable, "requirements/lock.py", "--check"], cwd=REPO, capture_output=True
    )
    assert checked.returncode == 0, checked.stderr.decode()


def test_pyproject_pins_are_the_locked_versions():
    direct = pins(PROJECT["dependencies"])
    for extra in PROJECT["optional-dependencies"].values():
        direct |= pins(extra)
    for name, version in direct.items():
        assert LOCKED.get(name) == version, f"{name}: pyproject {version}, lock {LOCKED.get(name)}"


def test_the_hooks_version_gate_is_the_lock():
    """clip_service/process/hooks.py refuses other versions at start: the lock must hold
    exactly the versions it was written for, or a fresh install does not start."""
    for name, version in WRITTEN_FOR.items():
        assert LOCKED.get(name) == version, f"hooks written for {name} {version}, lock has " + (
            f"{LOCKED.get(name)}: re-check the hooks (tests/test_hooks.py), then update both"
        )
    direct = pins(PROJECT["dependencies"])
    assert {name: direct.get(name) for name in WRITTEN_FOR} == WRITTEN_FOR


@pytest.mark.parametrize("name", ["serve.txt", "test.txt", "bench.txt"])
def test_every_exported_package_is_pinned_with_hashes(name):
    blocks = exported(name)
    assert {"bentoml", "torch", "uvicorn", "h11", "starlette"} <= set(blocks)
    unhashed = [package for package, hashes in blocks.items() if not hashes]
    assert not unhashed
    assert all(LOCKED[package] for package in blocks)


def test_the_cpu_export_swaps_only_the_torch_builds():
    serve, cpu = exported("serve.txt"), exported("serve-cpu.txt")
    text = (REPO / "requirements/serve-cpu.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text
    assert f"torch=={LOCKED['torch']}+cpu" in text
    assert f"torchvision=={LOCKED['torchvision']}+cpu" in text
    dropped = set(serve) - set(cpu)
    assert "triton" in dropped and "nvidia-cublas" in dropped
    assert all(re.match(r"(nvidia-|cuda-|triton$)", name) for name in dropped), dropped
    assert "nvidia-ml-py" in cpu  # bentoml's own dependency, not torch's CUDA
    assert cpu["torch"] == [] and cpu["torchvision"] == []  # the CPU index: not hashed here
    assert all(cpu[p] for p in cpu if p not in ("torch", "torchvision"))


def test_every_install_path_reads_the_lock():
    readme = (REPO / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2, "the README has two set-up commands"
    serve_cmd, test_cmd = commands
    assert serve_cmd.endswith("bentoml serve") and test_cmd.endswith("python -m pytest -q")
    assert "pip install -r requirements/serve.txt" in serve_cmd
    assert "pip install -r requirements/test.txt" in test_cmd
    for command in (serve_cmd, test_cmd):
        assert "pip install --no-deps -e ." in command
    assert test_cmd in (REPO / ".ci/run").read_text()
    for bentofile, export in [
        ("bentofile.yaml", "requirements/serve-cpu.txt"),
        ("bentofile.gpu.yaml", "requirements/serve.txt"),
        ("deploy/container/bentofile.offline.yaml", "requirements/serve.txt"),
    ]:
        python = yaml.safe_load((REPO / bentofile).read_text())["python"]
        assert python["requirements_txt"] == export and python["lock_packages"] is False
        assert "packages" not in python  # BentoML would resolve them at build time
    # The editable install's build backend, fetched by pip for the build: exact too.
    build_requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]
    assert all("==" in requirement for requirement in build_requires["requires"])


def third_party_imports() -> set[str]:
    """Top-level modules the service's code imports, other than its own and the stdlib."""
    own = {"clip_service", "runners", "service"}
    files = [REPO / "service.py", *REPO.glob("runners/*.py"), *REPO.glob("clip_service/**/*.py")]
    found = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {name for name in found - own if name not in sys.stdlib_module_names}


def test_what_the_service_imports_it_declares():
    """A package imported but only there because another brought it would move with that
    other's next release."""
    distributions = importlib.metadata.packages_distributions()
    declared = set(pins(PROJECT["dependencies"]))
    undeclared = {}
    for module in sorted(third_party_imports()):
        names = {Path(d).name.lower().replace("_", "-") for d in distributions.get(module, [])}
        if not names & declared:
            undeclared[module] = sorted(names)
    assert not undeclared
