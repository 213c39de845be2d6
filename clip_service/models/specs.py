"""Model specs: one string names a CLIP model, whichever library and wherever it lives.

Accepted forms (docs/configuration.md, "Model specs"):

* ``ViT-B-32:openai`` / ``ViT-L-14/openai``: an open_clip architecture and pretrained tag;
* ``hf-hub:org/repo``: an open_clip model on the Hugging Face Hub;
* ``local-dir:PATH``: an open_clip directory (``open_clip_config.json`` + weights);
* ``org/repo``: a transformers ``CLIPModel``, ``SiglipModel`` or ``Siglip2Model``
  repository on the Hub;
* a plain local directory, in transformers (``config.json``) or open_clip format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Backend = Literal["open_clip", "transformers"]

_HF_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class ModelSpecError(ValueError):
    """A model spec that names nothing loadable."""


@dataclass(frozen=True)
class ClipSpec:
    """A parsed CLIP model spec.

    ``name`` is what the backend's loader takes: for open_clip the model name with its
    schema (``ViT-B-32``, ``hf-hub:org/repo``, ``local-dir:/abs/path``), for transformers
    a repo id or a local directory. ``pretrained`` is the open_clip tag, if any.
    """

    raw: str
    backend: Backend
    name: str
    pretrained: str | None = None

    @property
    def is_local(self) -> bool:
        return self.name.startswith("local-dir:") or Path(self.name).is_dir()


def parse_clip_spec(raw: str) -> ClipSpec:
    """Parse any accepted spec form; raise :class:`ModelSpecError` naming the problem."""
    spec = raw.strip()
    if not spec:
        raise ModelSpecError("empty CLIP model spec")
    if spec.startswith("local-dir:"):
        path = Path(spec.removeprefix("local-dir:")).expanduser()
        if not (path / "open_clip_config.json").is_file():
            raise ModelSpecError(f"{raw!r}: no open_clip_config.json in {path}")
        return ClipSpec(raw, "open_clip", f"local-dir:{path.resolve()}")
    if spec.startswith("hf-hub:"):
        if not _HF_REPO_ID.match(spec.removeprefix("hf-hub:")):
            raise ModelSpecError(f"{raw!r}: expected hf-hub:org/repo")
        return ClipSpec(raw, "open_clip", spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _parse_local_dir(raw, path)
    arch_tag = _split_arch_tag(spec)
    if arch_tag is not None:
        arch, tag = arch_tag
        return ClipSpec(raw, "open_clip", arch, tag)
    if _HF_REPO_ID.match(spec):
        return ClipSpec(raw, "transformers", spec)
    if spec.startswith(("/", ".", "~")):
        raise ModelSpecError(f"{raw!r}: no such directory")
    raise ModelSpecError(
        f"{raw!r}: not an open_clip 'ARCH:tag', 'hf-hub:org/repo', 'local-dir:PATH', "
        "a Hugging Face repo id 'org/name' or a local model directory"
    )


def _parse_local_dir(raw: str, path: Path) -> ClipSpec:
    if (path / "open_clip_config.json").is_file():
        return ClipSpec(raw, "open_clip", f"local-dir:{path.resolve()}")
    if (path / "config.json").is_file():
        return ClipSpec(raw, "transformers", str(path.resolve()))
    raise ModelSpecError(
        f"{raw!r}: directory holds neither config.json (transformers) "
        "nor open_clip_config.json (open_clip)"
    )


def _split_arch_tag(spec: str) -> tuple[str, str] | None:
    """``ARCH:tag`` or ``ARCH/tag`` where ARCH is an open_clip architecture."""
    import open_clip  # here: it imports torch (seconds), which other specs never need

    for sep in (":", "/"):
        arch, found, tag = spec.partition(sep)
        if found and tag and arch in open_clip.list_models():
            known = open_clip.list_pretrained_tags_by_model(arch)
            if tag not in known:
                raise ModelSpecError(
                    f"{spec!r}: open_clip has no pretrained tag {tag!r} for {arch} "
                    f"(known: {', '.join(known) or 'none'})"
                )
            return arch, tag
    return None
