"""BLIP-2, GIT and Florence-2 captioners: parity with clip-interrogator 0.6.0 (BLIP-2, GIT)
and with transformers' own generate + post-processing (Florence-2), caption detail levels,
batching by task through the scheduler, family detection, and the entry's check of
``caption_detail``. In process, on the tiny generated models."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from clip_interrogator import Config, Interrogator
from clip_interrogator.clip_interrogator import CAPTION_MODELS
from PIL import Image
from transformers import AutoProcessor, BartTokenizer, Florence2ForConditionalGeneration

from clip_service.engines.caption_engine import CaptionEngine
from clip_service.errors import InvalidInput
from clip_service.models.caption_families import CAPTION_ALIASES, FLORENCE2
from clip_service.models.captioning import (
    CaptionDetail,
    Captioner,
    GenerationSettings,
    resolve_caption_model,
)
from clip_service.models.preprocess import build_preprocessor
from clip_service.models.specs import ModelSpecError
from clip_service.scheduling import Priority
from clip_service.server.interrogation import ImagePixels, InterrogationPipeline
from clip_service.testing.tiny_captioners import make_all_captioners

IMAGES = [
    Image.new("RGB", (64, 64), "black"),
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)),
    Image.new("RGB", (500, 300), "white"),
]
# clip-interrogator 0.6.0's alias of each tiny model's architecture.
LIBRARY_ALIASES = {
    "blip2-opt": "blip2-2.7b",
    "blip2-t5": "blip2-flan-t5-xl",
    "git": "git-large-coco",
}
# The processor and tokenizer classes of the real repositories each tiny model stands for.
PROCESSORS = {
    "blip2-opt": ("Blip2Processor", "GPT2Tokenizer"),
    "blip2-t5": ("Blip2Processor", "T5Tokenizer"),
    "git": ("GitProcessor", "BertTokenizer"),
}
FLORENCE_SETTINGS = GenerationSettings(max_new_tokens=8)  # num_beams: Florence-2's default, 3


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return make_all_captioners(tmp_path_factory.mktemp("captioners"))


@pytest.fixture(scope="module")
def florence(models) -> Captioner:
    return Captioner.load(str(models["florence2"]), "cpu", FLORENCE_SETTINGS)


def library_captions(monkeypatch, alias: str, model_dir: Path, max_length: int) -> list[str]:
    """0.6.0's own ``load_caption_model`` and ``generate_caption``, its alias pointing at the
    tiny model. Its constructor would also load CLIP and embed every label table, so the
    caption half is set up alone, with the attributes its constructor gives it on CPU."""
    monkeypatch.setitem(CAPTION_MODELS, alias, str(model_dir))
    interrogator = Interrogator.__new__(Interrogator)
    interrogator.config = Config(
        caption_model_name=alias, caption_max_length=max_length, device="cpu", quiet=True
    )
    interrogator.device, interrogator.dtype = "cpu", torch.float32
    interrogator.caption_offloaded = interrogator.clip_offloaded = True
    interrogator.load_caption_model()
    return [interrogator.generate_caption(image) for image in IMAGES]


@pytest.mark.parametrize("name", list(LIBRARY_ALIASES))
def test_captions_match_clip_interrogator_0_6_0(name, models, monkeypatch):
    # 0.6.0's caption_max_length shortened from 32 (the default of both) to keep this fast.
    expected = library_captions(monkeypatch, LIBRARY_ALIASES[name], models[name], 12)
    captioner = Captioner.load(str(models[name]), "cpu", GenerationSettings(max_new_tokens=12))

    assert captioner.caption(IMAGES) == expected  # one generate call for the three
    assert len(set(expected)) >= 2, "the test images should not all get one caption"


@pytest.fixture(scope="module")
def florence_reference(models):
    """Florence-2 as its model card runs it: the processor with the task token, generate,
    decode with the special tokens, the processor's post-processing for the task."""
    path = models["florence2"]
    processor = AutoProcessor.from_pretrained(path)
    model = Florence2ForConditionalGeneration.from_pretrained(path).eval()
    return lambda task, **generate: _florence_captions(processor, model, task, generate)


def _florence_captions(processor, model, task: str, generate: dict) -> list[str]:
    inputs = processor(text=[task] * len(IMAGES), images=IMAGES, return_tensors="pt")
    with torch.inference_mode():
        tokens = model.generate(**inputs, **generate)
    texts = processor.batch_decode(tokens, skip_special_tokens=False)
    return [
        processor.post_process_generation(text, task=task, image_size=image.size)[task]
        for text, image in zip(texts, IMAGES, strict=True)
    ]


def test_florence_captions_match_transformers_for_each_detail(florence, florence_reference):
    assert florence.settings.generate_kwargs() == {"max_new_tokens": 8, "num_beams": 3}
    captions = {}
    for detail, task in FLORENCE2.tasks.items():
        expected = florence_reference(task, max_new_tokens=8, num_beams=3)
        captions[detail] = florence.caption(IMAGES, detail)
        assert captions[detail] == expected, detail
        assert len(set(expected)) >= 2, "the test images should not all get one caption"
    assert len({tuple(c) for c in captions.values()}) == 3, "each task prompts differently"
    assert florence.caption(IMAGES) == captions[CaptionDetail.BRIEF]  # the default


def test_what_each_captioner_says_it_is(models, tiny_models, florence):
    blip = Captioner.load(str(tiny_models["blip"]), "cpu").info()
    assert (blip.family, blip.caption_details, blip.tasks) == ("blip", [], {})
    for name, family in [("blip2-opt", "blip-2"), ("blip2-t5", "blip-2"), ("git", "git")]:
        captioner = Captioner.load(str(models[name]), "cpu")
        processor, tokenizer = PROCESSORS[name]
        assert type(captioner.processor).__name__ == processor
        assert type(captioner.processor.tokenizer).__name__ == tokenizer
        info = captioner.info()
        assert (info.family, info.caption_details, info.tasks) == (family, [], {})
        assert info.generation == {"max_new_tokens": 32}  # 0.6.0's caption_max_length
    default = Captioner.load(str(models["florence2"]), "cpu").info().generation
    assert default == {"max_new_tokens": 1024, "num_beams": 3}  # Florence-2's model card
    assert type(florence.processor).__name__ == "Florence2Processor"
    assert isinstance(florence.processor.tokenizer, BartTokenizer)  # RobertaTokenizer in 5.x
    info = florence.info()
    assert info.family == "florence-2"
    assert info.caption_details == ["brief", "detailed", "more_detailed"]
    assert info.tasks == {
        "brief": "<CAPTION>",
        "detailed": "<DETAILED_CAPTION>",
        "more_detailed": "<MORE_DETAILED_CAPTION>",
    }
    # The entry rebuilds the image processor from the info: same pixels as the model's.
    preprocess = build_preprocessor(info.preprocess)
    np.testing.assert_array_equal(
        np.stack([preprocess(image) for image in IMAGES]), florence.preprocess(IMAGES)
    )


def test_caption_detail_is_refused_by_a_captioner_without_levels(models):
    git = Captioner.load(str(models["git"]), "cpu")
    with pytest.raises(ValueError, match=r"^caption_detail: .*\(git\) makes one kind"):
        git.caption(IMAGES[:1], CaptionDetail.DETAILED)


def test_requests_are_batched_by_task(florence):
    """Concurrent requests of two details: each generate call holds one task's images only,
    several requests share one, and every answer is the one it gets alone."""
    calls: list[tuple[CaptionDetail | None, int]] = []
    caption_pixels = florence.caption_pixels

    def recorded(pixels: np.ndarray, detail: CaptionDetail | None = None) -> list[str]:
        calls.append((detail, len(pixels)))
        return caption_pixels(pixels, detail)

    pixels = florence.preprocess(IMAGES)
    details = [CaptionDetail.BRIEF, CaptionDetail.DETAILED] * 3
    expected = {d: caption_pixels(pixels, d) for d in set(details)}

    async def run() -> list[list[str]]:
        florence.caption_pixels = recorded  # the engine binds it when it is made
        try:
            engine = CaptionEngine(florence, 8, slice_s=1.0, max_wait_s=60)
        finally:
            del florence.caption_pixels
        jobs = [engine.caption(pixels[i % 3 : i % 3 + 1], detail=d) for i, d in enumerate(details)]
        return await asyncio.gather(*jobs)

    answers = asyncio.run(run())
    for i, (detail, answer) in enumerate(zip(details, answers, strict=True)):
        assert answer == [expected[detail][i % 3]]
    assert sum(size for _, size in calls) == len(details)
    assert {detail for detail, _ in calls} == {CaptionDetail.BRIEF, CaptionDetail.DETAILED}
    assert len(calls) < len(details), f"no batching: {calls}"


def test_engine_refuses_a_detail_before_queueing(models):
    engine = CaptionEngine(Captioner.load(str(models["git"]), "cpu"), 8, slice_s=1.0, max_wait_s=60)
    pixels = engine.captioner.preprocess(IMAGES[:1])
    with pytest.raises(ValueError, match="caption_detail"):
        asyncio.run(engine.caption(pixels, detail=CaptionDetail.BRIEF))
    assert asyncio.run(engine.caption(pixels)) == engine.captioner.caption(IMAGES[:1])


class LocalCaptioner:
    """The captioner service's client API over an engine in this process."""

    def __init__(self, engine: CaptionEngine) -> None:
        self.engine = engine

    async def caption(
        self,
        pixels: np.ndarray,
        priority: Priority = Priority.INTERACTIVE,
        detail: CaptionDetail | None = None,
    ) -> list[str]:
        return await self.engine.caption(pixels, priority, detail)

    async def info(self):
        return self.engine.info()


@pytest.mark.parametrize("name", ["florence2", "git"])
def test_entry_checks_caption_detail_and_passes_it_on(name, models, florence):
    captioner = florence if name == "florence2" else Captioner.load(str(models[name]), "cpu")
    engine = CaptionEngine(captioner, 8, slice_s=1.0, max_wait_s=60)
    # Only the captioner's half of the pipeline is used here.
    pipeline = InterrogationPipeline(None, None, LocalCaptioner(engine), None, 60, None)
    image = ImagePixels(clip=None, caption=captioner.preprocess(IMAGES[1:2])[0])

    async def run(detail: CaptionDetail | None) -> str:
        await pipeline.check_caption_detail(detail)
        return await pipeline.caption(image, detail=detail)

    async def answers() -> tuple[str, str | InvalidInput]:
        default = await run(None)
        try:
            return default, await run(CaptionDetail.MORE_DETAILED)
        except InvalidInput as exc:
            return default, exc

    default, more_detailed = asyncio.run(answers())
    assert default == captioner.caption(IMAGES[1:2])[0]
    if name == "florence2":
        assert more_detailed == captioner.caption(IMAGES[1:2], CaptionDetail.MORE_DETAILED)[0]
    else:
        assert isinstance(more_detailed, InvalidInput) and more_detailed.status == 400
        assert str(more_detailed) == (
            "caption_detail: 'more_detailed' is not offered: the served captioner (git) makes "
            "one kind of caption; leave caption_detail out"
        )


def test_aliases_and_directories_resolve(models):
    for alias in ("blip2-2.7b", "blip2-flan-t5-xl", "git-large-coco"):
        assert resolve_caption_model(alias) == CAPTION_MODELS[alias]
    assert resolve_caption_model("florence-2-base") == "florence-community/Florence-2-base"
    assert resolve_caption_model("florence-2-large") == CAPTION_ALIASES["florence-2-large"]
    for path in models.values():
        assert resolve_caption_model(str(path)) == str(path.resolve())


@pytest.mark.parametrize(
    ("model_type", "architectures", "found"),
    [
        ("clip", ["CLIPModel"], "CLIPModel"),
        ("blip", ["BlipForQuestionAnswering"], "BlipForQuestionAnswering"),
        ("llava", None, "llava"),
    ],
)
def test_other_architectures_are_refused_naming_the_served_ones(
    model_type, architectures, found, models, tmp_path
):
    directory = shutil.copytree(models["git"], tmp_path / "model")
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type=model_type, architectures=architectures)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSpecError) as refused:
        Captioner.load(str(directory), "cpu")
    assert f"is a {found} model; the captioners served are blip (" in str(refused.value)
    assert "florence-2 (Florence2ForConditionalGeneration)" in str(refused.value)
