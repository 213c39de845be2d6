"""`clip-service build`: the repository's bentofile, plus a model choice and label caches.

BentoML copies files only from one build context, so the project's files (those the
bentofile includes) and the label-table caches are gathered in a temporary directory that
is built instead of the repository. Nothing is resolved or downloaded: the bentofile pins
every package and disables locking.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import bentoml
import pathspec
import yaml

# The Bento's label caches, relative to its src/ directory: BentoML's workers run there
# (`bentoml serve TAG`, and in the container), and only the entry service's workers read it.
BENTO_LABEL_CACHE = "label-cache"


def build_bento(
    project: Path,
    bentofile: str,
    envs: dict[str, str],
    label_cache: Callable[[Path], object] | None = None,
) -> str:
    """Build ``project`` with ``envs`` set in the Bento; return the Bento's tag.

    ``label_cache``, if given, writes the label-table files into the directory it is passed,
    which becomes the Bento's ``LABEL_CACHE_DIR``.
    """
    config = yaml.safe_load((project / bentofile).read_text())
    with tempfile.TemporaryDirectory(prefix="clip-service-build-") as tmp:
        stage = Path(tmp)
        copy_included(project, config.get("include", []), config.get("exclude", []), stage)
        # The locked requirements the bentofile installs from are read from the context too.
        if requirements := config.get("python", {}).get("requirements_txt"):
            (stage / requirements).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / requirements, stage / requirements)
        if label_cache is not None:
            label_cache(stage / BENTO_LABEL_CACHE)
            config["include"] = [*config.get("include", []), f"{BENTO_LABEL_CACHE}/*"]
            envs = {**envs, "LABEL_CACHE_DIR": BENTO_LABEL_CACHE}
        kept = [e for e in config.get("envs", []) if e["name"] not in envs]
        config["envs"] = kept + [{"name": k, "value": v} for k, v in envs.items()]
        staged = stage / "bentofile.yaml"
        staged.write_text(yaml.safe_dump(config, sort_keys=False))
        bento = bentoml.bentos.build_bentofile(str(staged), build_ctx=str(stage))
    return str(bento.tag)


def copy_included(project: Path, include: list[str], exclude: list[str], stage: Path) -> None:
    """Copy the files of ``project`` that the bentofile's patterns select into ``stage``.

    Hidden directories (.git, .venv...) and links to directories are never walked: no
    pattern here selects them.
    """
    includes = pathspec.PathSpec.from_lines("gitwildmatch", include)
    excludes = pathspec.PathSpec.from_lines("gitwildmatch", exclude)
    for path in _walk(project):
        relative = path.relative_to(project).as_posix()
        if includes.match_file(relative) and not excludes.match_file(relative):
            target = stage / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def _walk(root: Path) -> list[Path]:
    files = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        try:
            if entry.is_symlink() and entry.is_dir():
                continue
            if entry.is_dir():
                files.extend(_walk(entry))
            elif entry.is_file():
                files.append(entry)
        except OSError:  # not ours to read (a build tree's mounted /proc, say): never selected
            continue
    return files
