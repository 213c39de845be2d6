"""The ONNX Runtime image tower: equal to eager torch, exported once, rebuilt when damaged."""

from __future__ import annotations

import logging

import httpx
import numpy as np
import pytest

from clip_service.models import image_runtime
from clip_service.models.clip import ClipModel
from clip_service.models.factory import load_clip_model
from clip_service.models.image_runtime import min_cosine
from clip_service.models.specs import parse_clip_spec

BACKENDS = ["open-clip", "hf-clip"]


def _spec(tiny_models, name: str):
    path = tiny_models[name]
    return parse_clip_spec(f"local-dir:{path}" if name == "open-clip" else str(path))


def _load(tiny_models, name: str, cache, runtime: str = "onnx") -> ClipModel:
    return load_clip_model(
        _spec(tiny_models, name), "cpu", image_runtime=runtime, onnx_cache_dir=cache
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    # Five images: neither the export batch (2) nor the check batch (3).
    return np.random.default_rng(0).standard_normal((5, 3, 224, 224), dtype=np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKENDS)
def test_onnx_image_tower_equals_eager(tiny_models, cache, pixels, name):
    onnx = _load(tiny_models, name, cache)
    eager = _load(tiny_models, name, cache, runtime="torch")
    info = onnx.info()
    assert (info.image_runtime, info.precision, info.dtype) == ("onnxruntime", "fp32", "float32")
    assert eager.info().image_runtime == "torch"
    ours, expected = onnx.encode_images(pixels), eager.encode_images(pixels)
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    assert min_cosine(ours, expected) >= 0.99999
    np.testing.assert_allclose(ours, expected, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKENDS)
def test_cached_export_is_reused(tiny_models, cache, monkeypatch, name):
    _load(tiny_models, name, cache)  # exported here or by the test above

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(image_runtime, "_build", no_export)
    assert _load(tiny_models, name, cache).info().image_runtime == "onnxruntime"


@pytest.mark.slow
def test_corrupted_cache_file_is_rebuilt(tiny_models, tmp_path, pixels):
    first = _load(tiny_models, "open-clip", tmp_path)
    (graph,) = tmp_path.glob("*/image.onnx")
    graph.write_bytes(b"not a graph")
    second = _load(tiny_models, "open-clip", tmp_path)
    assert second.info().image_runtime == "onnxruntime"
    assert graph.read_bytes() != b"not a graph"
    np.testing.assert_array_equal(second.encode_images(pixels), first.encode_images(pixels))


@pytest.mark.slow
def test_graph_that_does_not_match_falls_back_to_torch(tiny_models, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(image_runtime.MIN_COSINE, "fp32", 1.5)  # no graph can pass
    with caplog.at_level(logging.WARNING, logger="clip_service.models.image_runtime"):
        model = _load(tiny_models, "hf-clip", tmp_path)
    assert model.info().image_runtime == "torch"
    assert "image tower runs in eager torch" in caplog.text


@pytest.mark.served
@pytest.mark.parametrize("fixture", ["open_clip_url", "hf_url"])
def test_served_default_on_cpu_is_the_onnx_image_tower(request, fixture):
    info = httpx.get(f"{request.getfixturevalue(fixture)}/model").json()
    assert (info["image_runtime"], info["precision"], info["dtype"]) == (
        "onnxruntime",
        "fp32",
        "float32",
    )
