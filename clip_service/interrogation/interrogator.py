"""The clip-interrogator 0.6.0 algorithm over injected async encoders, without its models.

Prompts must equal the library's as strings, so its behaviour is reproduced as is, quirks
included; each quirk is marked "0.6.0 quirk" where it is reproduced. The label tables live on
the model's device and similarities are computed with the torch operations 0.6.0 runs there:
float32 on CPU (its ``torch.cuda.amp.autocast()`` is a no-op there), float16 on CUDA; text
is encoded fresh wherever 0.6.0 calls the CLIP text encoder.
"""

from __future__ import annotations

import asyncio
import math
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np
import torch

from clip_service.interrogation.label_cache import LabelTables
from clip_service.interrogation.labels import MERGED_TABLES, TABLE_NAMES

__all__ = [
    "ANALYZE_TABLES",
    "DEFAULT_MAX_FLAVORS",
    "Captioner",
    "Interrogator",
    "InterrogatorSettings",
    "Mode",
    "TextEncoder",
]

# The tables clip-interrogator's "Analyze" tab reports.
ANALYZE_TABLES = ("mediums", "artists", "movements", "trendings", "flavors")

Captioner = Callable[[], Awaitable[str]]
# Called with (k, n) as chain step k of at most n begins.
StepReport = Callable[[int, int], None]
"""Produces the image's caption; only awaited when a mode needs one and none was given."""


class TextEncoder(Protocol):
    """The CLIP text tower, as the batched encoder service exposes it."""

    context_length: int

    async def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Raw (n, d) float32 text features, not normalised."""
        ...

    async def encode_texts_sharing_prefix(self, texts: Sequence[str]) -> np.ndarray:
        """``encode_texts`` for texts sharing a long prefix, which is encoded only once."""
        ...

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Untruncated token counts, start and end markers included."""
        ...


class Mode(StrEnum):
    BEST = "best"
    CLASSIC = "classic"
    FAST = "fast"
    NEGATIVE = "negative"


# 0.6.0's default max_flavors per mode (interrogate_classic defaults to 3, the others to 32).
DEFAULT_MAX_FLAVORS = {Mode.BEST: 32, Mode.CLASSIC: 3, Mode.FAST: 32, Mode.NEGATIVE: 32}


@dataclass(frozen=True)
class InterrogatorSettings:
    """0.6.0's Config defaults, plus the encoder batch bound for chain steps."""

    chunk_size: int = 2048  # ranking chunk of LabelTable.rank
    flavor_intermediate_count: int = 2048  # candidates kept for the best/negative chains
    # Candidate prompts per encoder call when a chain step scores ~2,000 of them: only this
    # many encodings are held at once (0.6.0 encodes them all in one batch).
    score_chunk_size: int = 512


class _Ranked:
    """Rows of one or more tables as one table (0.6.0's ``_merge_tables``), without copying.

    ``rank`` reproduces ``LabelTable.rank``/``_rank`` of 0.6.0, returning row indices.
    """

    def __init__(self, parts: Sequence[torch.Tensor], labels: list[str], chunk_size: int) -> None:
        self._parts = list(parts)
        self._starts = np.cumsum([0] + [len(p) for p in self._parts]).tolist()
        self.labels = labels
        self.chunk_size = chunk_size

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop): a view inside one table, a (contiguous) copy across tables."""
        pieces = []
        for part, begin in zip(self._parts, self._starts[:-1], strict=True):
            lo, hi = max(start - begin, 0), min(stop - begin, len(part))
            if lo < hi:
                pieces.append(part[lo:hi])
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def take(self, indices: Sequence[int]) -> torch.Tensor:
        def row(i: int) -> torch.Tensor:
            part = bisect_right(self._starts, i) - 1
            return self._parts[part][i - self._starts[part]]

        if not indices:
            first = self._parts[0]
            return first.new_empty((0, first.shape[1]))
        return torch.stack([row(i) for i in indices])

    def rank(self, image: torch.Tensor, top_count: int, reverse: bool = False) -> list[int]:
        n = len(self.labels)
        if n <= self.chunk_size:
            return _top(image, self.rows(0, n), top_count, reverse)
        num_chunks = math.ceil(n / self.chunk_size)
        # 0.6.0 quirk: each chunk contributes only int(chunk_size / num_chunks) rows, so the
        # result holds at most that many rows per chunk (2035 for the 111,867 merged labels).
        keep_per_chunk = int(self.chunk_size / num_chunks)
        kept: list[int] = []
        for start in range(0, n, self.chunk_size):
            rows = self.rows(start, min(start + self.chunk_size, n))
            kept.extend(start + i for i in _top(image, rows, keep_per_chunk, reverse))
        # 0.6.0 quirk: the final re-rank of the kept rows ignores `reverse` (most similar first).
        return [kept[i] for i in _top(image, self.take(kept), top_count, reverse=False)]


def _top(image: torch.Tensor, embeds: torch.Tensor, top_count: int, reverse: bool) -> list[int]:
    """0.6.0's ``LabelTable._rank``: top-k of ``image @ embeds.T`` (same op, shapes, tie order:
    the top-k itself runs on the CPU in float32, as there)."""
    top_count = min(top_count, len(embeds))
    similarity = image @ embeds.T
    if reverse:
        similarity = -similarity
    return similarity.float().cpu().topk(top_count, dim=-1).indices[0].tolist()


def _unit(features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows scaled to unit length (in float32), in ``dtype``: 0.6.0's in-place ``/= norm``."""
    features = features.float()
    return (features / features.norm(dim=-1, keepdim=True)).to(dtype)


class Interrogator:
    """Prompts for an image from its CLIP features, equal to clip-interrogator 0.6.0's."""

    def __init__(
        self,
        encoder: TextEncoder,
        tables: LabelTables,
        settings: InterrogatorSettings | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        """``device``: where the tables are held and ranked (the text tower's device)."""
        self.encoder = encoder
        self.settings = settings or InterrogatorSettings()
        self.device = torch.device(device)
        # 0.6.0 keeps the tables in float16 on CUDA and converts them to float32 on CPU.
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        embeds = {
            name: torch.from_numpy(tables[name].embeds).to(self.device, self.dtype)
            for name in TABLE_NAMES
        }
        labels = {name: list(tables[name].table.labels) for name in TABLE_NAMES}
        cs = self.settings.chunk_size
        self._tables = {name: _Ranked([embeds[name]], labels[name], cs) for name in TABLE_NAMES}
        merged_labels = [label for name in MERGED_TABLES for label in labels[name]]
        self._merged = _Ranked([embeds[name] for name in MERGED_TABLES], merged_labels, cs)
        self._negative_labels = labels["negative"]
        self.dim = tables["flavors"].embeds.shape[1]

    async def interrogate(
        self,
        image_features: np.ndarray,
        mode: Mode | str = Mode.BEST,
        *,
        caption: str | None = None,
        captioner: Captioner | None = None,
        min_flavors: int = 8,
        max_flavors: int | None = None,
        on_step: StepReport | None = None,
    ) -> str:
        """0.6.0's ``interrogate``/``_classic``/``_fast``/``_negative`` for raw image features.

        ``on_step(k, n)`` is called as chain step k of at most n begins (best and negative).

        ``max_flavors`` defaults to the library method's default for the mode (classic: 3,
        others: 32); ``min_flavors`` only affects ``best`` (0.6.0's negative chain always uses
        8). As in 0.6.0 an empty caption counts as missing: ``captioner`` is awaited if given,
        else the empty caption is used (what 0.6.0 ends up with when BLIP returns "").
        """
        mode = Mode(mode)
        if max_flavors is None:
            max_flavors = DEFAULT_MAX_FLAVORS[mode]
        if min_flavors < 0 or max_flavors < 0:
            raise ValueError("min_flavors and max_flavors must not be negative")
        image = self._normalise(image_features)
        if mode is Mode.NEGATIVE:
            return await self._negative(image, max_flavors, on_step)
        if not caption and captioner is not None:
            caption = await captioner()
        if caption is None:
            raise ValueError(f"mode {mode} needs a caption or a captioner")
        if mode is Mode.CLASSIC:
            return await self._classic(image, caption, max_flavors)
        if mode is Mode.FAST:
            return await self._fast(image, caption, max_flavors)
        return await self._best(image, caption, min_flavors, max_flavors, on_step)

    async def analyze(
        self, image_features: np.ndarray, top_k: int = 5
    ) -> dict[str, list[tuple[str, float]]]:
        """Top-k labels per table with their cosine similarity to the image.

        Labels are ranked as 0.6.0's ``LabelTable.rank`` does; scores use the cached
        (float16-rounded) label embeddings, so no text is encoded.
        """
        image = self._normalise(image_features)

        def run() -> dict[str, list[tuple[str, float]]]:
            out = {}
            for name in ANALYZE_TABLES:
                table = self._tables[name]
                top = table.rank(image, top_k)
                scores = (image @ table.take(top).T).float()[0].tolist()
                out[name] = [(table.labels[i], s) for i, s in zip(top, scores, strict=True)]
            return out

        return await asyncio.to_thread(run)

    def _normalise(self, image_features: np.ndarray) -> torch.Tensor:
        """(1, d) unit image features on the tables' device, as 0.6.0's image_to_features."""
        # A copy (torch.tensor): features decoded from a request are read-only arrays.
        image = torch.tensor(np.asarray(image_features, dtype=np.float32).reshape(1, -1))
        if image.shape[1] != self.dim:
            raise ValueError(f"image features have {image.shape[1]} dims, tables {self.dim}")
        return _unit(image.to(self.device), self.dtype)

    async def _rank(
        self, table: _Ranked, image: torch.Tensor, top_count: int, reverse: bool = False
    ) -> list[str]:
        """Labels ranked off the event loop: the merged table is ~112k rows."""
        top = await asyncio.to_thread(table.rank, image, top_count, reverse)
        return [table.labels[i] for i in top]

    async def _best(
        self,
        image: torch.Tensor,
        caption: str,
        min_flavors: int,
        max_flavors: int,
        on_step: StepReport | None,
    ) -> str:
        count = self.settings.flavor_intermediate_count
        flaves = await self._rank(self._merged, image, count)
        best_sim = await self._similarity(image, caption)
        best_prompt = await self._chain(
            image, flaves, caption, best_sim, min_flavors, max_flavors, on_step=on_step
        )
        fast_prompt = await self._fast(image, caption, max_flavors)
        # 0.6.0 quirk: the classic candidate gets max_flavors flavors, not classic's 3.
        classic_prompt = await self._classic(image, caption, max_flavors)
        # 0.6.0 picks the most similar of the four (np.argmax: the first on exact ties).
        candidates = [caption, classic_prompt, fast_prompt, best_prompt]
        return candidates[int(np.argmax(await self._similarities(image, candidates)))]

    async def _classic(self, image: torch.Tensor, caption: str, max_flavors: int) -> str:
        medium = (await self._rank(self._tables["mediums"], image, 1))[0]
        artist = (await self._rank(self._tables["artists"], image, 1))[0]
        trending = (await self._rank(self._tables["trendings"], image, 1))[0]
        movement = (await self._rank(self._tables["movements"], image, 1))[0]
        flaves = ", ".join(await self._rank(self._tables["flavors"], image, max_flavors))
        if caption.startswith(medium):
            prompt = f"{caption} {artist}, {trending}, {movement}, {flaves}"
        else:
            prompt = f"{caption}, {medium} {artist}, {trending}, {movement}, {flaves}"
        return await self._truncate_to_fit(prompt)

    async def _fast(self, image: torch.Tensor, caption: str, max_flavors: int) -> str:
        tops = await self._rank(self._merged, image, max_flavors)
        return await self._truncate_to_fit(caption + ", " + ", ".join(tops))

    async def _negative(
        self, image: torch.Tensor, max_flavors: int, on_step: StepReport | None
    ) -> str:
        count = self.settings.flavor_intermediate_count
        flaves = await self._rank(self._tables["flavors"], image, count, reverse=True)
        phrases = flaves + self._negative_labels
        return await self._chain(
            image, phrases, max_count=max_flavors, reverse=True, on_step=on_step
        )

    async def _chain(
        self,
        image: torch.Tensor,
        phrases: Sequence[str],
        best_prompt: str = "",
        best_sim: float = 0,
        min_count: int = 8,
        max_count: int = 32,
        reverse: bool = False,
        on_step: StepReport | None = None,
    ) -> str:
        """0.6.0's ``chain``: greedily append the phrase that scores best, keep the best prompt.

        0.6.0 holds the phrases in a ``set`` and scores them in its (PYTHONHASHSEED-dependent)
        iteration order, taking the first maximum; here they are scored in the order given,
        also taking the first maximum. The two can only differ when two candidates score
        exactly equal, where the library itself depends on the hash seed.
        """
        pool = dict.fromkeys(phrases)  # 0.6.0 quirk: set() drops duplicate phrases
        if not best_prompt:
            phrase_list = list(pool)
            best_prompt = phrase_list[await self._rank_top(image, phrase_list, reverse)]
            # 0.6.0 quirk: this starting score is not negated even when `reverse` is set, so
            # the negative chain compares negated scores against an un-negated start.
            best_sim = await self._similarity(image, best_prompt)
            del pool[best_prompt]
        curr_prompt, curr_sim = best_prompt, best_sim

        for idx in range(max_count):
            if not pool:  # 0.6.0 would fail on an empty batch here; there is nothing to add
                break
            if on_step is not None:
                on_step(idx + 1, max_count)
            phrase_list = list(pool)
            prefix = curr_prompt + ", "
            flave = phrase_list[
                await self._rank_top(image, [prefix + f for f in phrase_list], reverse)
            ]
            prompt = prefix + flave
            # 0.6.0 re-encodes the winner alone (batch of one) rather than reusing its score.
            sim = await self._similarity(image, prompt)
            if reverse:
                sim = -sim
            if sim > best_sim:
                best_prompt, best_sim = prompt, sim
            # 0.6.0 quirk: the first min_count additions are accepted even if they score worse.
            if not (sim > curr_sim or idx < min_count):
                break
            curr_prompt, curr_sim = prompt, sim
            if (await self._at_max_len([curr_prompt]))[0]:
                break
            del pool[flave]
        return best_prompt

    async def _rank_top(self, image: torch.Tensor, texts: Sequence[str], reverse: bool) -> int:
        """Index of the text most (least, if ``reverse``) similar to the image.

        0.6.0 encodes all texts in one batch; here they are encoded ``score_chunk_size`` at a
        time keeping a running best, so memory stays bounded. A strict ``>`` across chunks
        keeps torch.argmax's first-maximum rule over the whole list. A chain step's texts
        share the current prompt, so the encoder runs that prefix once per chunk.
        """
        best_idx, best_score = -1, -math.inf
        step = self.settings.score_chunk_size
        for start in range(0, len(texts), step):
            chunk = texts[start : start + step]
            similarity = self._cosine(image, await self.encoder.encode_texts_sharing_prefix(chunk))
            if reverse:
                similarity = -similarity
            idx = int(similarity.argmax())
            if similarity[idx, 0].item() > best_score:
                best_idx, best_score = start + idx, similarity[idx, 0].item()
        return best_idx

    async def _text_similarity(self, image: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """(n, 1) cosine similarities of freshly encoded float32 text features, as 0.6.0."""
        return self._cosine(image, await self.encoder.encode_texts(texts))

    def _cosine(self, image: torch.Tensor, text_features: np.ndarray) -> torch.Tensor:
        features = torch.tensor(np.asarray(text_features, dtype=np.float32))
        return (_unit(features.to(self.device), self.dtype) @ image.T).float().cpu()

    async def _similarity(self, image: torch.Tensor, text: str) -> float:
        return (await self._text_similarity(image, [text]))[0, 0].item()

    async def _similarities(self, image: torch.Tensor, texts: Sequence[str]) -> list[float]:
        return (await self._text_similarity(image, texts)).T[0].tolist()

    async def _at_max_len(self, texts: Sequence[str]) -> list[bool]:
        """0.6.0's ``_prompt_at_max_len`` (``tokenize([text])[0][-1] != 0``) for each text.

        open_clip's tokenizer pads with 0 and, when truncating, ends on the end-of-text
        token, so the last slot is non-zero exactly when the text needs the whole context.
        """
        limit = self.encoder.context_length
        return [n >= limit for n in await self.encoder.count_tokens(texts)] if texts else []

    async def _truncate_to_fit(self, text: str) -> str:
        """0.6.0's ``_truncate_to_fit``: drop ", "-separated parts from the first that overflows.

        All checks go to the encoder in one batch (each only depends on the parts before it).
        """
        parts = text.split(", ")
        # 0.6.0 quirk: it tests `new_text + part`, without the ", " that is then added.
        checks = [", ".join(parts[:i]) + parts[i] for i in range(1, len(parts))]
        full = await self._at_max_len(checks)
        keep = next((i for i, at_max in enumerate(full, 1) if at_max), len(parts))
        return ", ".join(parts[:keep])
