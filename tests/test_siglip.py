"""SigLIP and SigLIP 2, in open_clip's and transformers' formats (tiny random models made by
:mod:`clip_service.testing.tiny_siglip`): embeddings and probabilities equal the libraries'
own, ``/rank`` and ``/classify`` score with the sigmoid rule in process, and interrogation
runs on label tables made by the model."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from starlette.testclient import TestClient
from transformers import AutoModel, AutoProcessor

from clip_service.interrogation.interrogator import Interrogator, Mode
from clip_service.interrogation.label_cache import LabelCache, LabelTables
from clip_service.interrogation.labels import TABLE_NAMES, package_data_dir, read_label_tables
from clip_service.models.clip import ClipModel, ModelInfo, ModelUnavailableError
from clip_service.models.factory import load_clip_model
from clip_service.models.preprocess import build_preprocessor, input_size
from clip_service.models.ranking import rank
from clip_service.models.specs import parse_clip_spec
from clip_service.testing.images import image_bytes, make_image
from clip_service.testing.tiny_siglip import make_all_siglip
from tests.conftest import REPO, b64, in_process_entry

FORMATS = ("open-clip-siglip", "open-clip-siglip2", "hf-siglip", "hf-siglip2")
TEXTS = ["a photo of a cat", "A DOG on the beach!", "zebra", "qqq xyzzy, 42"]
# Landscape, portrait and square: SigLIP 2's NaFlex grids differ for each, in one batch.
IMAGES = [make_image(1, (300, 200)), make_image(2, (90, 240)), make_image(3, (64, 64))]


@pytest.fixture(scope="module")
def siglip_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_all_siglip(tmp_path_factory.mktemp("siglip"))


def spec_of(models: dict[str, Path], name: str) -> str:
    path = models[name]
    return f"local-dir:{path}" if name.startswith("open-clip") else str(path)


@pytest.fixture(scope="module")
def ours(siglip_models: dict[str, Path]) -> dict[str, ClipModel]:
    """The service's models (torch image tower: an ONNX export would only cost time here)."""
    return {
        name: load_clip_model(parse_clip_spec(spec_of(siglip_models, name)), "cpu", **TORCH)
        for name in FORMATS
    }


TORCH = {"image_runtime": "torch"}


def library_text_embeddings(spec: str, name: str, texts: list[str]) -> np.ndarray:
    """Normalised text embeddings as each library's documentation computes them."""
    with torch.inference_mode():
        if name.startswith("open-clip"):
            model, _, _ = open_clip.create_model_and_transforms(spec)
            return model.encode_text(open_clip.get_tokenizer(spec)(texts), normalize=True).numpy()
        model, processor = AutoModel.from_pretrained(spec), AutoProcessor.from_pretrained(spec)
        inputs = processor(text=texts, padding="max_length", max_length=64, return_tensors="pt")
        return normalized(model.get_text_features(**inputs).pooler_output.numpy())


def library_outputs(spec: str, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image and text embeddings (normalised) and the sigmoid probabilities per image, as
    each library's documentation computes them."""
    with torch.inference_mode():
        if name.startswith("open-clip"):
            model, _, preprocess = open_clip.create_model_and_transforms(spec)
            tokenizer = open_clip.get_tokenizer(spec)
            image = model.encode_image(torch.stack([preprocess(i) for i in IMAGES]), normalize=True)
            text = model.encode_text(tokenizer(TEXTS), normalize=True)
            logits = image @ text.T * model.logit_scale.exp() + model.logit_bias
        else:
            model, processor = AutoModel.from_pretrained(spec), AutoProcessor.from_pretrained(spec)
            inputs = processor(
                text=TEXTS, images=IMAGES, padding="max_length", max_length=64, return_tensors="pt"
            )
            outputs = model(**inputs)
            image, text, logits = (
                outputs.image_embeds,
                outputs.text_embeds,
                outputs.logits_per_image,
            )
    return image.numpy(), text.numpy(), torch.sigmoid(logits).numpy()


def normalized(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


@pytest.mark.parametrize("name", FORMATS)
def test_embeddings_and_probabilities_equal_the_librarys(siglip_models, ours, name) -> None:
    model = ours[name]
    # As the entry service receives it from the encoder service.
    info = ModelInfo.model_validate_json(model.info().model_dump_json())
    assert (info.scoring, info.logit_bias) == ("sigmoid", pytest.approx(-1.0))
    assert info.logit_scale == pytest.approx(10.0)
    preprocess = build_preprocessor(info.preprocess)  # as the entry service rebuilds it
    images = model.encode_images(np.stack([preprocess(image) for image in IMAGES]))
    texts = model.encode_texts(TEXTS)
    library_images, library_texts, library_probabilities = library_outputs(
        spec_of(siglip_models, name), name
    )
    np.testing.assert_allclose(normalized(images), library_images, atol=2e-6)
    np.testing.assert_allclose(normalized(texts), library_texts, atol=2e-6)
    probabilities, _ = rank(images, texts, info.scorer())
    np.testing.assert_allclose(probabilities, library_probabilities, atol=1e-6)
    # A spread the softmax could not give: rows do not sum to one.
    assert np.abs(probabilities.sum(axis=1) - 1).max() > 0.1


def test_clip_keeps_the_softmax(tiny_models) -> None:
    for spec in (f"local-dir:{tiny_models['open-clip']}", str(tiny_models["hf-clip"])):
        info = load_clip_model(parse_clip_spec(spec), "cpu", **TORCH).info()
        assert (info.scoring, info.logit_bias) == ("softmax", None)


def test_naflex_images_keep_their_aspect_ratio_and_refuse_onnx(siglip_models, ours) -> None:
    """SigLIP 2's patches are packed with their grid (preprocess.py): each image keeps a
    grid of its own shape; the ONNX runtime (one fixed input size) is refused by name when
    asked for, and not chosen by ``auto``."""
    preprocess = build_preprocessor(ours["hf-siglip2"].info().preprocess)
    grids = [tuple(preprocess(image)[-1, :2]) for image in IMAGES]
    assert grids[0][1] > grids[0][0] and grids[1][0] > grids[1][1] and grids[2][0] == grids[2][1]
    assert input_size(ours["hf-siglip2"].info().preprocess) == 16 * 16
    spec = parse_clip_spec(str(siglip_models["hf-siglip2"]))
    with pytest.raises(ModelUnavailableError, match="IMAGE_RUNTIME=onnx"):
        load_clip_model(spec, "cpu", image_runtime="onnx")
    # The CPU default (auto: ONNX Runtime where it can) runs NaFlex in torch.
    assert load_clip_model(spec, "cpu", image_runtime="auto").info().image_runtime == "torch"


def test_other_transformers_models_are_refused_naming_the_served_ones(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelUnavailableError, match=r"'bert'.*SiglipModel"):
        load_clip_model(parse_clip_spec(str(tmp_path)), "cpu", **TORCH)


# The entry service in process reads its settings when service.py is first imported and
# registers BentoML's metrics once per process: another module's in-process app (test_http)
# would have fixed both, so the tests on it run in a pytest of their own.
OWN_PROCESS = "CLIP_SERVICE_SIGLIP_ENTRY_TESTS"
ENTRY_TESTS = (
    "test_model_route_says_which_rule",
    "test_rank_and_classify_answer_the_models_own_probabilities",
)
in_own_process = pytest.mark.skipif(
    os.environ.get(OWN_PROCESS) != "1", reason="run by test_entry_routes_in_a_process_of_their_own"
)


def test_entry_routes_in_a_process_of_their_own() -> None:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += [f"{Path(__file__).relative_to(REPO)}::{name}" for name in ENTRY_TESTS]
    env = {**os.environ, OWN_PROCESS: "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and "2 passed" in result.stdout, result.stdout[-4000:]


@pytest.fixture(scope="module")
def client(siglip_models, tmp_path_factory) -> Iterator[TestClient]:
    """The entry service in process on the open_clip SigLIP model, CLIP only."""
    home = tmp_path_factory.mktemp("siglip-in-process")
    env = {
        "CLIP_MODEL": spec_of(siglip_models, "open-clip-siglip"),
        "CAPTION_MODEL": "none",
        "IMAGE_RUNTIME": "torch",
        "BENTOML_HOME": str(home / "bentoml"),
        "JOBS_DB": str(home / "jobs.sqlite3"),
        "CUSTOM_TABLES_DIR": str(home / "label-lists"),
        "HF_HUB_OFFLINE": "1",
    }
    with in_process_entry(env) as test_client:
        yield test_client


@in_own_process
def test_model_route_says_which_rule(client: TestClient) -> None:
    model = client.get("/model").json()
    assert (model["scoring"], model["logit_bias"]) == ("sigmoid", pytest.approx(-1.0))


@in_own_process
def test_rank_and_classify_answer_the_models_own_probabilities(
    client: TestClient, siglip_models
) -> None:
    """What a user of open_clip computes for the same PNGs and texts."""
    pngs = [image_bytes(image) for image in IMAGES]
    body = {
        "queries": [{"img_blob": b64(png)} for png in pngs],
        "candidates": [{"text": text} for text in TEXTS],
    }
    answer = client.post("/rank", json=body)
    assert answer.status_code == 200, answer.text
    spec = spec_of(siglip_models, "open-clip-siglip")
    model, _, preprocess = open_clip.create_model_and_transforms(spec)
    tokenizer = open_clip.get_tokenizer(spec)

    def library(texts: list[str]) -> np.ndarray:
        decoded = [Image.open(io.BytesIO(png)).convert("RGB") for png in pngs]
        with torch.inference_mode():
            image = model.encode_image(torch.stack([preprocess(i) for i in decoded]), True)
            text = model.encode_text(tokenizer(texts), normalize=True)
            return torch.sigmoid(image @ text.T * model.logit_scale.exp() + model.logit_bias)

    expected = library(TEXTS).numpy()
    np.testing.assert_allclose(answer.json()["probabilities"], expected, atol=1e-5)

    labels = ["cat", "dog", "zebra"]
    scores = client.post("/classify", json={"image": body["queries"][0], "labels": labels})
    assert scores.status_code == 200, scores.text
    got = {s["label"]: s["probability"] for s in scores.json()["scores"]}
    expected = library([f"a photo of a {label}" for label in labels])[0].numpy()
    np.testing.assert_allclose([got[label] for label in labels], expected, atol=1e-5)


class _Encoder:
    """The interrogator's text encoder over the service's in-process model."""

    def __init__(self, model: ClipModel) -> None:
        self.model, self.context_length = model, model.context_length

    async def encode_texts(self, texts):
        return self.model.encode_texts(texts)

    async def encode_texts_sharing_prefix(self, texts):
        return self.model.encode_texts_sharing_prefix(texts)

    async def count_tokens(self, texts):
        return self.model.count_tokens(texts)


@pytest.fixture(scope="module")
def small_label_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every 400th label of each installed list: enough to rank, quick to embed."""
    out = tmp_path_factory.mktemp("siglip-labels")
    for path in package_data_dir().glob("*.txt"):
        lines = path.read_text("utf-8", "replace").splitlines()
        (out / path.name).write_text("\n".join(lines[::400]) + "\n", "utf-8")
    return out


@pytest.mark.parametrize("name", ["open-clip-siglip", "hf-siglip2"])
def test_interrogation_runs_on_siglip_tables(
    siglip_models, ours, small_label_data, tmp_path, name
) -> None:
    """Label tables are made by (and filed under) this model; interrogation ranks them by
    cosine, as clip-interrogator does: the sigmoid is monotonic in the cosine, so the order
    is the model's own either way."""
    model = ours[name]
    encoder = _Encoder(model)

    async def run() -> tuple[dict, dict[str, str], LabelTables, np.ndarray]:
        cache = LabelCache(tmp_path, model.spec.raw, encoder.encode_texts, progress=False)
        tables = await cache.embed_all(read_label_tables(small_label_data))
        interrogator = Interrogator(encoder, tables)
        preprocess = build_preprocessor(model.info().preprocess)
        features = model.encode_images(preprocess(IMAGES[0])[None])[0]
        prompts = {
            mode.value: await interrogator.interrogate(
                features, mode, caption="a photo of a cat", max_flavors=4
            )
            for mode in Mode
        }
        return await interrogator.analyze(features, top_k=3), prompts, tables, features

    analysis, prompts, tables, features = asyncio.run(run())
    assert all(prompts.values()), prompts
    assert all(p.startswith("a photo of a cat") for m, p in prompts.items() if m != "negative")
    # Filed under this model's spec: another model never reads these embeddings.
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) == len(TABLE_NAMES)
    for path in files:
        with safe_open(path, framework="np") as f:
            assert f.metadata()["model_key"] == model.spec.raw
    # The tables hold this model's own text embeddings (float16, as clip-interrogator's).
    flavors = tables["flavors"]
    labels = list(flavors.table.labels)
    expected = library_text_embeddings(spec_of(siglip_models, name), name, labels)
    np.testing.assert_allclose(normalized(flavors.embeds), expected, atol=2e-3)
    for table, ranked in analysis.items():
        embedded = tables[table]
        probabilities, _ = rank(features[None], embedded.embeds, model.scoring)
        by_sigmoid = np.argsort(-probabilities[0], kind="stable")[:3]
        assert [label for label, _ in ranked] == [embedded.table.labels[i] for i in by_sigmoid]
