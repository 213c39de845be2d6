"""Encode many texts that share a token prefix, running the prefix through the tower once.

CLIP's text transformer is causal, so the tokens of a shared prefix see only that prefix:
their keys and values at every layer are the same for every text. They are computed once;
then each text's suffix (up to its end-of-text token, where the output is read) runs alone,
attending to the prefix's keys/values plus its own causal part. A clip-interrogator chain
step scores ~2,000 prompts ``f"{prompt}, {flavor}"`` sharing ``prompt``, so most of the work
goes. The result equals the plain forward pass up to float rounding.

A :class:`PrefixCache` keeps recent prefixes' keys and values: a chain step's prompts arrive
in several slices (the scheduler interleaves other work), and each step's prompt extends the
previous step's, so most prefixes are computed once per interrogation, not once per call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Suffix tokens per forward chunk: bounds the activations (and the attention scores) held.
CHUNK_TOKENS = 8192


@dataclass(frozen=True)
class PrefixLayer:
    """One pre-norm residual attention block, as its library's weights."""

    norm1: nn.Module
    qkv: Callable[[torch.Tensor], Sequence[torch.Tensor]]  # (n, s, d) -> q, k, v (n, s, d)
    out: nn.Module
    heads: int
    scale1: nn.Module  # layer scale after attention (nn.Identity when the model has none)
    norm2: nn.Module
    mlp: nn.Module
    scale2: nn.Module


@dataclass(frozen=True)
class PrefixTower:
    """A causal text tower taken apart: embedding, blocks, and pooled-token head."""

    embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # ids (n, s), positions (s,)
    layers: Sequence[PrefixLayer]
    head: Callable[[torch.Tensor], torch.Tensor]  # (n, d) pooled tokens -> final norm, proj


LayerCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (1, h, p, d)


class PrefixCache:
    """The keys and values of the last ``entries`` prefixes, by token ids."""

    def __init__(self, entries: int = 16) -> None:
        self.entries = entries
        self._cached: OrderedDict[tuple[int, ...], LayerCache] = OrderedDict()

    def longest(self, ids: tuple[int, ...]) -> tuple[int, LayerCache | None]:
        """(length, keys and values) of the longest cached prefix of ``ids`` ((0, None): none)."""
        best: tuple[int, ...] = ()
        for key in self._cached:
            if len(best) < len(key) <= len(ids) and ids[: len(key)] == key:
                best = key
        if not best:
            return 0, None
        self._cached.move_to_end(best)
        return len(best), self._cached[best]

    def put(self, ids: tuple[int, ...], layers: LayerCache) -> None:
        self._cached[ids] = layers
        self._cached.move_to_end(ids)
        while len(self._cached) > self.entries:
            self._cached.popitem(last=False)


def shared_prefix_length(ids: torch.Tensor, eot: torch.Tensor) -> int:
    """Longest token prefix common to all rows, short enough to leave each row its EOT."""
    limit = int(eot.min())
    differs = (ids[:, :limit] != ids[:1, :limit]).any(dim=0).nonzero()
    return int(differs[0]) if len(differs) else limit


@dataclass(frozen=True)
class PrefixedRows:
    """Token rows ``ids`` (n, L), read at ``eot`` (n,), sharing their first ``prefix_length``
    tokens: one chain step's prompts, tokenized once. Slices keep the whole step's prefix, so
    a step cut into slices by the scheduler runs every slice against the same cached prefix
    (a slice's own common prefix would be longer, and different for each)."""

    ids: torch.Tensor
    eot: torch.Tensor
    prefix_length: int

    @classmethod
    def of(cls, ids: torch.Tensor, eot: torch.Tensor) -> PrefixedRows:
        return cls(ids, eot, shared_prefix_length(ids, eot))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows: slice) -> PrefixedRows:
        return PrefixedRows(self.ids[rows], self.eot[rows], self.prefix_length)


def _layer(
    layer: PrefixLayer, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x`` (n, s, d) through one block after ``past`` keys/values; returns x, k, v."""
    n, s, _ = x.shape
    q, k, v = (t.reshape(n, s, layer.heads, -1).transpose(1, 2) for t in layer.qkv(layer.norm1(x)))
    if past is not None:
        k = torch.cat([past[0].expand(n, -1, -1, -1), k], dim=2)
        v = torch.cat([past[1].expand(n, -1, -1, -1), v], dim=2)
    p = k.shape[2] - s
    # Position p + i sees every earlier position and itself (the tower's causal mask).
    mask = torch.ones(s, p + s, dtype=torch.bool, device=x.device).tril(diagonal=p)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    x = x + layer.scale1(layer.out(attended.transpose(1, 2).reshape(n, s, -1)))
    x = x + layer.scale2(layer.mlp(layer.norm2(x)))
    return x, k, v


def _chunks(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """[start, stop) ranges over ascending ``lengths``, each padded to its last within budget."""
    ranges, start = [], 0
    for stop in range(1, len(lengths) + 1):
        if stop - start > 1 and (stop - start) * lengths[stop - 1] > budget:
            ranges.append((start, stop - 1))
            start = stop - 1
    return [*ranges, (start, len(lengths))]


@torch.inference_mode()
def encode_sharing_prefix(
    tower: PrefixTower,
    rows: PrefixedRows,
    lock: AbstractContextManager,
    cache: PrefixCache | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
) -> torch.Tensor:
    """Pooled, projected features of ``rows``.

    ``lock`` is held per forward chunk, so other batches can run in between. The prefix's
    keys and values come from ``cache`` as far as it has them, and are stored there.
    """
    ids, eot, p = rows.ids, rows.eot, rows.prefix_length
    positions = torch.arange(ids.shape[1], device=ids.device)
    prefix = tuple(ids[0, :p].tolist())
    known, past = cache.longest(prefix) if cache is not None else (0, None)
    layers: list[tuple[torch.Tensor, torch.Tensor] | None]
    layers = list(past) if past is not None else [None] * len(tower.layers)
    if p > known:
        with lock:
            x = tower.embed(ids[:1, known:p], positions[known:p])
            for i, layer in enumerate(tower.layers):
                x, k, v = _layer(layer, x, layers[i])
                layers[i] = (k, v)
        if cache is not None:
            cache.put(prefix, layers)  # type: ignore[arg-type]
    suffix_lengths = eot - p + 1
    order = torch.argsort(suffix_lengths, stable=True)
    sorted_lengths = suffix_lengths[order].tolist()
    parts = []
    for start, stop in _chunks(sorted_lengths, chunk_tokens):
        rows, s = order[start:stop], sorted_lengths[stop - 1]
        with lock:
            x = tower.embed(ids[rows, p : p + s], positions[p : p + s])
            for layer, past_kv in zip(tower.layers, layers, strict=True):
                x, _, _ = _layer(layer, x, past_kv if p else None)
            pooled = x[torch.arange(len(rows), device=x.device), eot[rows] - p]
            parts.append(tower.head(pooled))
    features = torch.cat(parts)
    return torch.empty_like(features).index_copy_(0, order.to(features.device), features)
