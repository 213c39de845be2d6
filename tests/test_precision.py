"""CLIP_PRECISION / IMAGE_RUNTIME: what each combination runs, and how close it stays to fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clip_service.models.factory import load_clip_model
from clip_service.models.image_runtime import min_cosine
from clip_service.models.precision import PrecisionError, plan
from clip_service.models.specs import parse_clip_spec

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
TEXTS = ["a photo of a cat", "a diagram", "an oil painting of a harbour at night"]


@pytest.mark.parametrize(
    ("device", "precision", "runtime", "expected"),
    [
        (CPU, "auto", "auto", ("fp32", "onnx")),
        (CPU, "fp32", "torch", ("fp32", "torch")),
        (CPU, "bf16", "auto", ("bf16", "torch")),
        (CPU, "int8", "auto", ("int8", "onnx")),
        (CUDA, "auto", "auto", ("fp16", "torch")),
        (CUDA, "bf16", "torch", ("bf16", "torch")),
        (CUDA, "fp32", "auto", ("fp32", "torch")),
    ],
)
def test_plan(device, precision, runtime, expected):
    chosen = plan(device, precision, runtime)
    assert (chosen.precision, chosen.image_runtime) == expected


@pytest.mark.parametrize(
    ("device", "precision", "runtime", "message"),
    [
        (CPU, "fp16", "auto", "fp16 needs a CUDA device"),
        (CUDA, "int8", "auto", "int8 runs on CPU only"),
        (CUDA, "fp32", "onnx", "IMAGE_RUNTIME=onnx runs on CPU"),
        (CPU, "bf16", "onnx", "IMAGE_RUNTIME=onnx runs on CPU in fp32 or int8"),
        (CPU, "int8", "torch", "int8 runs the image tower in ONNX Runtime"),
    ],
)
def test_impossible_combinations_are_refused(device, precision, runtime, message):
    with pytest.raises(PrecisionError, match=message):
        plan(device, precision, runtime)


@pytest.fixture(scope="module", params=["open-clip", "hf-clip"])
def spec(request, tiny_models):
    path = tiny_models[request.param]
    return parse_clip_spec(f"local-dir:{path}" if request.param == "open-clip" else str(path))


@pytest.fixture(scope="module")
def reference(spec):
    """fp32 eager embeddings of random pixels and of TEXTS."""
    model = load_clip_model(spec, "cpu", image_runtime="torch")
    pixels = np.random.default_rng(1).standard_normal((4, 3, 224, 224), dtype=np.float32)
    return pixels, model.encode_images(pixels), model.encode_texts(TEXTS)


def test_bf16_converts_weights_and_stays_close(spec, reference):
    pixels, images, texts = reference
    model = load_clip_model(spec, "cpu", precision="bf16", image_runtime="auto")
    info = model.info()
    assert (info.dtype, info.precision, info.image_runtime) == ("bfloat16", "bf16", "torch")
    assert {p.dtype for p in model.model.parameters()} == {torch.bfloat16}
    assert min_cosine(model.encode_images(pixels), images) >= 0.999
    assert min_cosine(model.encode_texts(TEXTS), texts) >= 0.999


@pytest.mark.slow
def test_int8_quantises_the_image_tower_only(spec, reference, tmp_path):
    pixels, images, texts = reference
    model = load_clip_model(
        spec, "cpu", precision="int8", image_runtime="auto", onnx_cache_dir=tmp_path
    )
    info = model.info()
    assert (info.dtype, info.precision, info.image_runtime) == ("float32", "int8", "onnxruntime")
    ours = model.encode_images(pixels)
    assert ours.dtype == np.float32
    assert 0.99 <= min_cosine(ours, images) < 0.999999  # quantised: close, not equal
    np.testing.assert_array_equal(model.encode_texts(TEXTS), texts)
