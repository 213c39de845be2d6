"""`clip-service caption-dir` and `encode-dir --layout clip-retrieval`: a folder of images to
a caption file beside each (or one JSONL), resumable; embeddings in the layout
embedding-reader (autofaiss, clip-retrieval) reads.

The folder walk, outputs and resuming run against a scripted target (the part under test is
the client's); the HTTP client against scripted answers (retries, refusals, what is sent);
the in-process target against the library's captioner called directly; the served test
against the session server's own routes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner, Result

from clip_service.cli.bulk_encode import BulkEncodeError, encode_dir
from clip_service.cli.caption_dir import JsonLines, Skip, TextFiles, Texts, caption_dir
from clip_service.cli.caption_dir import Result as Described
from clip_service.cli.caption_targets import ServerTarget
from clip_service.cli.index_folder import IndexFolder
from clip_service.cli.main import main
from clip_service.inputs.images import decode_image
from tests.conftest import copy_label_tables, make_image

UNICODE = "sub dir/ünï cödé 猫.png"
IMAGES = ["0.png", "1.jpg", "a/b/deep.webp", UNICODE, "with space.png"]


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output[-3000:]
    return result.output


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Images in nested folders (spaces, non-ASCII names), a broken one, other files."""
    root = tmp_path / "images"
    for i, name in enumerate(IMAGES):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        make_image(i, (40 + i, 30)).save(root / name)
    (root / "broken.png").write_bytes(b"not an image")
    (root / "notes.md").write_text("not an image either")
    (root / ".hidden.png").write_bytes(b"a hidden file: left alone")
    return root


class Scripted:
    """A target answering from the image's bytes: a caption naming its size in bytes."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.seen: list[bytes] = []
        self.in_flight = self.most_in_flight = 0
        self.stop_after = stop_after

    async def describe(self, data: bytes) -> Described:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)  # let the other workers start theirs
            if not data.startswith((b"\x89PNG", b"\xff\xd8", b"RIFF")):
                raise Skip("image: not a readable image")
            if self.stop_after is not None and len(self.seen) >= self.stop_after:
                await asyncio.Event().wait()  # hangs, as a run does until it is interrupted
            self.seen.append(data)
            return Described(caption=f"{len(data)} bytes")
        finally:
            self.in_flight -= 1


def caption_of(root: Path, name: str) -> str:
    return f"{len((root / name).read_bytes())} bytes"


def run(root: Path, target, output, **options):
    return asyncio.run(caption_dir(root, target, output, progress=False, **options))


def test_a_txt_beside_each_image_then_only_what_is_missing(folder: Path) -> None:
    target = Scripted()
    summary = run(folder, target, TextFiles(folder, False), texts=Texts("tok, ", " end"))
    assert (summary.written, summary.already) == (len(IMAGES), 0)
    assert summary.failed == [("broken.png", "image: not a readable image")]
    assert summary.ignored == ["notes.md"]
    for name in IMAGES:
        text = (folder / name).with_suffix(".txt").read_text("utf-8")
        assert text == f"tok, {caption_of(folder, name)} end"
    assert not (folder / ".hidden.txt").exists() and not list(folder.rglob("*.tmp"))

    (folder / "0.txt").unlink()
    (folder / "with space.txt").write_text(" \n")  # empty: not done
    again = run(folder, Scripted(), TextFiles(folder, False))
    assert (again.written, again.already) == (2, len(IMAGES) - 2)
    assert again.ignored == ["notes.md"]  # the .txt files written are no news
    assert (folder / "0.txt").read_text() == caption_of(folder, "0.png")
    assert (folder / "1.txt").read_text().startswith("tok, ")  # kept

    redone = run(folder, Scripted(), TextFiles(folder, True))
    assert (redone.written, redone.already) == (len(IMAGES), 0)
    assert (folder / "1.txt").read_text() == caption_of(folder, "1.jpg")


def test_an_interrupted_run_keeps_what_was_written_and_the_next_one_finishes(folder) -> None:
    async def interrupted() -> None:
        output = TextFiles(folder, False)
        task = asyncio.ensure_future(
            caption_dir(folder, Scripted(stop_after=3), output, concurrency=2, progress=False)
        )
        while len(list(folder.rglob("*.txt"))) < 3:
            await asyncio.sleep(0.01)
        task.cancel()  # what Ctrl-C does to asyncio.run's task
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    assert len(list(folder.rglob("*.txt"))) == 3
    target = Scripted()
    summary = run(folder, target, TextFiles(folder, False))
    assert (summary.written, summary.already) == (len(IMAGES) - 3, 3)
    assert len(target.seen) == len(IMAGES) - 3


def test_jsonl_records_resume_after_a_cut_last_line_and_overwrite_starts_afresh(
    folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "metadata.jsonl"
    output = JsonLines(out, False)
    run(folder, Scripted(), output, texts=Texts("tok, "))
    output.close()
    records = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert sorted(r["file_name"] for r in records) == sorted(IMAGES)
    record = next(r for r in records if r["file_name"] == UNICODE)
    assert record == {
        "file_name": UNICODE,
        "text": f"tok, {caption_of(folder, UNICODE)}",
        "caption": caption_of(folder, UNICODE),
    }
    # As if killed while writing: the last record is cut short.
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:-1]) + lines[-1][:10])
    lost = json.loads(lines[-1])["file_name"]
    output = JsonLines(out, False)
    summary = run(folder, Scripted(), output)
    output.close()
    assert (summary.written, summary.already) == (1, len(IMAGES) - 1)
    records = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert sorted(r["file_name"] for r in records) == sorted(IMAGES)
    assert records[-1]["file_name"] == lost

    output = JsonLines(out, True)
    assert run(folder, Scripted(), output).written == len(IMAGES)
    output.close()
    assert len(out.read_text("utf-8").splitlines()) == len(IMAGES)


def test_images_sharing_a_txt_name_are_reported_and_n_run_at_once(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    for i in range(12):
        make_image(i, (32, 32)).save(root / f"{i}.png")
    make_image(1, (32, 32)).save(root / "3.jpg")  # 3.txt is 3.jpg's (first in path order)
    target = Scripted()
    summary = run(root, target, TextFiles(root, False), concurrency=4)
    assert summary.failed == [("3.png", "3.txt belongs to 3.jpg")]
    assert summary.written == 12 and target.most_in_flight == 4
    assert (root / "3.txt").read_text() == caption_of(root, "3.jpg")


def scripted_server(answers: list[httpx.Response], sent: list[httpx.Request]):
    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path == "/model":
            return httpx.Response(200, json={"interrogation": {"caption_model": "blip"}})
        return answers.pop(0)

    return httpx.MockTransport(handle)


def test_the_server_target_sends_base64_retries_when_told_and_skips_refused_images() -> None:
    sent: list[httpx.Request] = []
    answers = [
        httpx.Response(503, headers={"retry-after": "0"}, json={"error": "tables"}),
        httpx.Response(200, json={"caption": "a cat", "prompt": "a cat, art", "mode": "fast"}),
        httpx.Response(400, json={"error": "image: not a readable image"}),
    ]
    target = ServerTarget(
        "http://server:3000/", "fast", api_key="k1", transport=scripted_server(answers, sent)
    )

    async def calls() -> tuple[Described, Exception]:
        await target.check()
        described = await target.describe(b"png bytes")
        with pytest.raises(Skip) as refused:
            await target.describe(b"bad")
        await target.close()
        return described, refused.value

    described, refused = asyncio.run(calls())
    assert described == Described(caption="a cat", prompt="a cat, art")
    assert str(refused) == "image: not a readable image"
    assert [r.url.path for r in sent] == ["/model", "/interrogate", "/interrogate", "/interrogate"]
    assert {r.headers["authorization"] for r in sent} == {"Bearer k1"}
    body = json.loads(sent[1].content)
    assert body == {"image": {"img_blob": base64.b64encode(b"png bytes").decode()}, "mode": "fast"}


def test_the_caption_route_gets_the_detail_and_a_refused_key_stops_the_run() -> None:
    sent: list[httpx.Request] = []
    answers = [httpx.Response(401, json={"error": "authorization: the API key is not valid"})]
    transport = scripted_server(answers, sent)
    target = ServerTarget("http://server:3000", "caption", detail="detailed", transport=transport)
    with pytest.raises(BulkEncodeError, match="/caption: the server answered 401: authorization"):
        asyncio.run(target.describe(b"png"))
    assert json.loads(sent[0].content)["caption_detail"] == "detailed"
    assert "authorization" not in sent[0].headers


def test_a_detail_the_served_captioner_lacks_is_refused_before_any_image() -> None:
    served = {"caption_model": "blip-base", "captioner": {"caption_details": []}}

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"interrogation": served})

    transport = httpx.MockTransport(handle)
    target = ServerTarget("http://server", "best", detail="detailed", transport=transport)
    with pytest.raises(BulkEncodeError, match=r"'detailed': the served captioner \(blip-base\)"):
        asyncio.run(target.check())
    served["captioner"]["caption_details"] = ["brief", "detailed"]
    asyncio.run(target.check())


def test_a_server_without_a_captioner_is_refused_before_any_image() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"interrogation": None})

    target = ServerTarget("http://server", "caption", transport=httpx.MockTransport(handle))
    with pytest.raises(BulkEncodeError, match="serves no captioner"):
        asyncio.run(target.check())


def test_in_process_captions_are_the_captioners_own(tiny_models, folder: Path) -> None:
    from PIL import Image

    from clip_service.models.captioning import Captioner

    # The tiny random BLIP captions most images alike; plain black and white ones differ.
    names = [*IMAGES, "black.png", "white.png"]
    Image.new("RGB", (64, 64), "black").save(folder / "black.png")
    Image.new("RGB", (64, 64), "white").save(folder / "white.png")
    output = ok(cli("caption-dir", folder, "--caption-model", tiny_models["blip"],
                    "--suffix", ", tok", "--concurrency", 3))  # fmt: skip
    assert f"{len(names)} written, 0 already there, 1 skipped" in output
    assert "skipped broken.png: image: not a readable image" in output
    captioner = Captioner.load(str(tiny_models["blip"]), "cpu")
    black, white = (folder / "black.txt").read_text(), (folder / "white.txt").read_text()
    assert black != white
    for name in names:
        image = decode_image((folder / name).read_bytes(), "image", max_pixels=10**7)
        expected = captioner.caption([image])[0] + ", tok"
        assert (folder / name).with_suffix(".txt").read_text("utf-8") == expected
    again = ok(cli("caption-dir", folder, "--caption-model", tiny_models["blip"]))
    assert f"0 written, {len(names)} already there" in again


def test_command_line_refusals(tmp_path: Path) -> None:
    assert "no such directory" in cli("caption-dir", tmp_path / "none").output
    refused = cli("caption-dir", tmp_path, "--detail", "detailed", "--caption-model", "none")
    assert refused.exit_code == 1 and "--detail is sent to a server" in refused.output
    unreachable = cli("caption-dir", tmp_path, "--url", "http://127.0.0.1:9")
    assert unreachable.exit_code == 1 and "cannot reach http://127.0.0.1:9" in unreachable.output


def read_like_embedding_reader(folder: Path) -> np.ndarray:
    """What embedding-reader's NumpyReader (autofaiss, clip-retrieval's indexer) does with
    a folder: every ``**/*.npy`` in sorted path order, each header's shape and dtype read
    with its regexes from the first line of at most 300 bytes, then the rows from there."""
    rows = []
    for path in sorted(str(p) for p in folder.glob("**/*.npy")):
        with open(path, "rb") as f:
            first_line = f.read(300).split(b"\n")[0]
            found = re.search(r"'shape': \(([0-9]+), ([0-9]+)\)", str(first_line))
            assert found is not None, path
            count, dim = int(found.group(1)), int(found.group(2))
            descr = re.search(r"'descr': '([<f0-9]+)'", str(first_line))
            assert descr is not None, path
            if count == 0:
                continue  # skipped by the reader (then the metadata would be misaligned)
            f.seek(len(first_line) + 1)
            data = f.read(count * dim * np.dtype(descr.group(1)).itemsize)
            rows.append(np.frombuffer(data, dtype=descr.group(1)).reshape(count, dim))
    return np.concatenate(rows)


@pytest.fixture(scope="module")
def encoder(tiny_models):
    from clip_service.cli.bulk_encode import InProcessEncoder
    from clip_service.models.factory import load_clip_model
    from clip_service.models.specs import parse_clip_spec

    model = load_clip_model(parse_clip_spec(f"local-dir:{tiny_models['open-clip']}"), "cpu")
    return InProcessEncoder(model, 10**7)


def test_embeddings_in_clip_retrievals_layout_resume_by_part(encoder, folder, tmp_path) -> None:
    out = tmp_path / "index"
    store = IndexFolder(out, encoder.model, rows_per_file=2)
    summary = encode_dir(folder, store, encoder, batch_size=1, progress=False)
    store.close()
    assert summary.encoded == len(IMAGES)
    parts = sorted(p.name for p in (out / "img_emb").iterdir())
    assert parts == ["img_emb_000000.npy", "img_emb_000001.npy", "img_emb_000002.npy"]
    names = [
        json.loads(line)["image_path"]
        for listing in sorted((out / "metadata").glob("*.jsonl"))
        for line in listing.read_text("utf-8").splitlines()
    ]
    assert names == sorted(IMAGES)
    vectors = read_like_embedding_reader(out)
    assert vectors.dtype == np.float16 and vectors.shape == (len(IMAGES), 32)
    raw = encoder.encode(folder, names).vectors
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors.astype(np.float32), unit, atol=2e-3)

    # Killed between a part's two renames: its metadata without vectors is dropped, and
    # its images are encoded again.
    (out / "img_emb" / "img_emb_000001.npy").unlink()
    store = IndexFolder(out, encoder.model, rows_per_file=2)
    assert store.done == names[:2] + names[4:]
    again = encode_dir(folder, store, encoder, batch_size=8, progress=False)
    store.close()
    assert (again.encoded, again.already) == (2, 3)
    assert not (out / "metadata" / "metadata_000001.jsonl").exists()
    listings = sorted((out / "metadata").glob("*.jsonl"))
    names = [json.loads(x)["image_path"] for p in listings for x in p.read_text().splitlines()]
    vectors = read_like_embedding_reader(out)
    assert len(names) == len(vectors) == len(IMAGES) and sorted(names) == sorted(IMAGES)
    by_name = dict(zip(names, vectors.astype(np.float32), strict=True))
    np.testing.assert_allclose([by_name[n] for n in sorted(IMAGES)], unit, atol=2e-3)
    with pytest.raises(BulkEncodeError, match="holds embeddings of"):
        IndexFolder(out, "another model")


@pytest.fixture
def server_images(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "served"
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        make_image(i, (64, 48)).save(root / f"{i}.png")
    make_image(7, (50, 40)).save(root / "sub" / "ü x.jpg")
    (root / "broken.jpg").write_bytes(b"nope")
    yield root


@pytest.mark.served
def test_served_captions_and_prompts_are_the_routes_own(
    open_clip_server, tiny_models, server_images: Path, tmp_path: Path
) -> None:
    """Against the session server: each .txt is what /caption answers for that image, each
    JSONL prompt what /interrogate answers; in process, with the server's label tables,
    the same prompts."""
    url = open_clip_server.url
    names = ["0.png", "1.png", "2.png", "sub/ü x.jpg"]
    output = ok(cli("caption-dir", server_images, "--url", url, "--concurrency", 4))
    assert "4 written, 0 already there, 1 skipped" in output
    out = tmp_path / "prompts.jsonl"
    ok(cli("caption-dir", server_images, "--url", url, "--mode", "fast", "--jsonl", out))
    records = {r["file_name"]: r for r in map(json.loads, out.read_text("utf-8").splitlines())}
    for name in names:
        blob = base64.b64encode((server_images / name).read_bytes()).decode()
        body = {"image": {"img_blob": blob}}
        caption = httpx.post(f"{url}/caption", json=body, timeout=120).json()["caption"]
        assert (server_images / name).with_suffix(".txt").read_text("utf-8") == caption
        prompt = httpx.post(f"{url}/interrogate", json={**body, "mode": "fast"}, timeout=120)
        assert records[name]["prompt"] == records[name]["text"] == prompt.json()["prompt"]

    tables = copy_label_tables(open_clip_server, tmp_path / "labels")
    local = tmp_path / "local.jsonl"
    ok(cli("caption-dir", server_images, "--mode", "fast", "--jsonl", local,
           "--model-name", f"local-dir:{tiny_models['open-clip']}",
           "--caption-model", tiny_models["blip"], "--label-cache-dir", tables))  # fmt: skip
    mine = {r["file_name"]: r["prompt"] for r in map(json.loads, local.read_text().splitlines())}
    assert mine == {name: records[name]["prompt"] for name in names}


def test_a_result_that_cannot_be_written_stops_the_run_in_one_line(folder: Path) -> None:
    (folder / "0.txt").mkdir()  # where 0.png's caption would go
    with pytest.raises(BulkEncodeError, match=r"0\.png: cannot write its result"):
        run(folder, Scripted(), TextFiles(folder, False))
