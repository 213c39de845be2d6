"""Re-lock the project: resolve pyproject.toml into uv.lock, then export the install sets.

    python requirements/lock.py                      # after editing pyproject.toml
    python requirements/lock.py --upgrade-package X  # move one package (any `uv lock` flag)
    python requirements/lock.py --check              # exit 1 unless the exports match uv.lock

``uv.lock`` is the one lock: every package of the tree, for every platform, with hashes.
The files in ``requirements/`` are its exports in the format pip and BentoML read:

* ``serve.txt``: the service (README's first command, ``bentofile.gpu.yaml``, the container
  check);
* ``serve-cpu.txt``: the same with PyTorch's CPU-only wheels (``bentofile.yaml``): torch and
  torchvision from the PyTorch CPU index, pinned by version, and without the CUDA packages
  only the PyPI build of torch needs;
* ``test.txt``: the service and the test tools (README's second command, ``.ci/run``);
* ``bench.txt``: the service and the benchmark tools.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPORTS = {"serve.txt": [], "test.txt": ["test"], "bench.txt": ["bench"]}
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_BUILDS = ("torch", "torchvision")  # taken from CPU_INDEX as <version>+cpu
CUDA_ONLY = re.compile(r"^(nvidia-|cuda-|triton$)")  # what PyPI's torch adds for CUDA


def export(extras: list[str]) -> str:
    """uv's requirements.txt export of uv.lock (no re-resolution: ``--frozen``)."""
    command = ["uv", "export", "--frozen", "--no-emit-project", "--no-dev", "--quiet"]
    for extra in extras:
        command += ["--extra", extra]
    return subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout


def cuda_only_packages(lock: dict) -> set[str]:
    """Packages in the service's tree only because PyPI's torch wheels are CUDA builds."""
    packages = {p["name"]: p for p in lock["package"]}

    def needs(package: dict) -> list[str]:
        """The package's dependencies, with those of the extras it asks of them."""
        names = []
        for dep in package.get("dependencies", []):
            names.append(dep["name"])
            extras = packages[dep["name"]].get("optional-dependencies", {})
            names += [d["name"] for extra in dep.get("extra", []) for d in extras.get(extra, [])]
        return names

    deps = {name: needs(package) for name, package in packages.items()}
    project = next(p for p in lock["package"] if p.get("source", {}).get("editable") == ".")

    def reachable(roots: list[str], cut_cuda_edges: bool) -> set[str]:
        seen: set[str] = set()
        todo = list(roots)
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for dep in deps.get(name, []):
                if cut_cuda_edges and name in CPU_BUILDS and CUDA_ONLY.match(dep):
                    continue
                todo.append(dep)
        return seen

    roots = [d["name"] for d in project.get("dependencies", [])]
    return reachable(roots, cut_cuda_edges=False) - reachable(roots, cut_cuda_edges=True)


def requirement_blocks(text: str) -> list[tuple[str | None, str]]:
    """A uv export split into (package name or None, its lines) blocks."""
    blocks: list[tuple[str | None, str]] = []
    for line in text.splitlines(keepends=True):
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if match:
            blocks.append((match[1].lower(), line))
        elif line.startswith((" ", "\t")) and blocks and blocks[-1][0] is not None:
            name, lines = blocks[-1]
            blocks[-1] = (name, lines + line)
        else:
            blocks.append((None, line))
    return blocks


def cpu_variant(serve: str, lock: dict) -> str:
    """``serve.txt`` with the CPU builds of torch and torchvision instead of the CUDA ones."""
    drop = cuda_only_packages(lock) | set(CPU_BUILDS)
    versions = {p["name"]: p["version"] for p in lock["package"]}
    header = (
        "# serve.txt with PyTorch's CPU-only wheels (requirements/lock.py writes this file).\n"
        "# torch and torchvision come from the PyTorch CPU index, pinned by version: that\n"
        "# index is not reachable where the lock is made, so their hashes are not recorded.\n"
        f"--extra-index-url {CPU_INDEX}\n"
    )
    kept = "".join(lines for name, lines in requirement_blocks(serve) if name not in drop)
    pins = "".join(f"{name}=={versions[name]}+cpu\n" for name in CPU_BUILDS)
    return header + kept + pins


def expected_exports() -> dict[str, str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    files = {name: export(extras) for name, extras in EXPORTS.items()}
    files["serve-cpu.txt"] = cpu_variant(files["serve.txt"], lock)
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the exports")
    args, uv_lock_args = parser.parse_known_args()
    if not args.check:
        subprocess.run(["uv", "lock", *uv_lock_args], cwd=ROOT, check=True)
    stale = []
    for name, text in expected_exports().items():
        path = ROOT / "requirements" / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python requirements/lock.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
