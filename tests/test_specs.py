from __future__ import annotations

import pytest

from clip_service.models.specs import ModelSpecError, parse_clip_spec


@pytest.mark.parametrize(
    ("raw", "backend", "name", "pretrained"),
    [
        ("ViT-B-32:openai", "open_clip", "ViT-B-32", "openai"),
        ("ViT-L-14/openai", "open_clip", "ViT-L-14", "openai"),
        ("ViT-H-14/laion2b_s32b_b79k", "open_clip", "ViT-H-14", "laion2b_s32b_b79k"),
        ("openai/clip-vit-base-patch32", "transformers", "openai/clip-vit-base-patch32", None),
        (
            "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            "open_clip",
            "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            None,
        ),
        ("  ViT-B-32:openai  ", "open_clip", "ViT-B-32", "openai"),
    ],
)
def test_hub_specs(raw, backend, name, pretrained):
    spec = parse_clip_spec(raw)
    assert (spec.backend, spec.name, spec.pretrained) == (backend, name, pretrained)
    assert spec.raw == raw
    assert not spec.is_local


def test_local_dirs_in_both_formats(tiny_models):
    open_clip_dir, hf_dir = tiny_models["open-clip"], tiny_models["hf-clip"]
    for raw in (f"local-dir:{open_clip_dir}", str(open_clip_dir)):
        spec = parse_clip_spec(raw)
        assert spec.backend == "open_clip"
        assert spec.name == f"local-dir:{open_clip_dir.resolve()}"
        assert spec.is_local
    spec = parse_clip_spec(str(hf_dir))
    assert (spec.backend, spec.name, spec.is_local) == ("transformers", str(hf_dir), True)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "empty"),
        ("ViT-B-32:no-such-tag", "no pretrained tag 'no-such-tag'"),
        ("/no/such/dir", "no such directory"),
        ("local-dir:/no/such/dir", "no open_clip_config.json"),
        ("hf-hub:not a repo", "expected hf-hub:org/repo"),
        ("not a model", "not an open_clip"),
    ],
)
def test_bad_specs_name_the_problem(raw, problem):
    with pytest.raises(ModelSpecError, match=problem):
        parse_clip_spec(raw)


def test_directory_in_neither_format(tmp_path):
    with pytest.raises(ModelSpecError, match=r"neither config\.json"):
        parse_clip_spec(str(tmp_path))
