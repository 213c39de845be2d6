"""The JSON nesting scanner: what counts as a level, and that it stays cheap."""

from __future__ import annotations

import json
import random

import pytest

from clip_service.inputs import json_depth
from clip_service.inputs.json_depth import exceeds_depth


def nested(depth: int, kind: str = "[") -> bytes:
    if kind == "[":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("kind", ["[", "{"])
def test_depth_up_to_the_limit_passes_one_more_does_not(kind):
    assert not exceeds_depth(nested(32, kind), 32)
    assert exceeds_depth(nested(33, kind), 32)
    mixed = b'{"a": [{"b": [' * 10 + b"1" + b"]}]}" * 10  # 40 levels of arrays and objects
    assert exceeds_depth(mixed, 39) and not exceeds_depth(mixed, 40)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 200,  # brackets inside a string are text
        "{[" * 100 + '"',  # ...with a quote that is part of the text
        '\\"' + "[" * 100,  # an escaped quote does not end the string
        "\\\\" + "x",  # an escaped backslash does not escape what follows
    ],
)
def test_brackets_inside_strings_do_not_count(text):
    body = json.dumps([{"text": text}, {"text": "]" * 50}]).encode()
    assert not exceeds_depth(body, 2)
    assert exceeds_depth(body, 1)


def test_an_escaped_backslash_before_a_quote_ends_the_string():
    # "a\\" is a complete string; the brackets after it are structure.
    body = b'["a\\\\", ' + nested(40) + b"]"
    assert exceeds_depth(body, 32)


def reference_depth(body: bytes) -> int:
    """Byte by byte: a quote after an even run of backslashes opens or closes a string."""
    depth = deepest = backslashes = 0
    inside = False
    for byte in body:
        if byte == ord('"') and backslashes % 2 == 0:
            inside = not inside
        elif not inside and byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif not inside and byte in b"]}":
            depth -= 1
        backslashes = backslashes + 1 if byte == ord("\\") else 0
    return deepest


@pytest.mark.parametrize("slice_bytes", [1, 2, 3, 7, 1 << 20])
def test_matches_a_byte_by_byte_scan_across_slice_boundaries(monkeypatch, slice_bytes):
    monkeypatch.setattr(json_depth, "_SLICE", slice_bytes)
    rng = random.Random(slice_bytes)
    for _ in range(500):
        body = bytes(rng.choice(b'[]{}"\\ a,:') for _ in range(rng.randint(0, 50)))
        deepest = reference_depth(body)
        for limit in (0, 1, 2, 4):
            assert exceeds_depth(body, limit) is (deepest > limit), (body, limit)


def test_a_deep_body_is_judged_from_its_first_slice(monkeypatch):
    """A 100 KB body of brackets is refused from the first slice it reads; a flat 4 MB body
    is read in whole slices, never byte by byte (the speed of both, relative to the JSON
    parser, is checked in tests/test_speed_ratios.py)."""
    slices = []
    real = json_depth._unescaped_quotes

    def counted(data, carried):
        slices.append(len(data))
        return real(data, carried)

    monkeypatch.setattr(json_depth, "_unescaped_quotes", counted)
    assert exceeds_depth(nested(50_000) * 20, 32)
    assert len(slices) == 1
    slices.clear()
    body = json.dumps([{"text": "[x] {y}"} for _ in range(200_000)]).encode()  # ~4 MB
    assert not exceeds_depth(body, 32)
    assert slices == [json_depth._SLICE] * (len(body) // json_depth._SLICE) + [
        len(body) % json_depth._SLICE
    ]
