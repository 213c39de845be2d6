"""``/classify`` templates: exactly one bare ``{}``, nothing else ``str.format`` would read.

Hypothesis builds templates from the pieces of the format mini-language (fields with
indexes, names, attributes, conversions, format specs, escaped and lone braces) and plain
text. For every one, :func:`parse_template` either refuses it with an error naming
``template``, or accepts it exactly when ``string.Formatter`` sees one bare field, and then
filling equals ``str.format`` and is never longer than the template plus the label.
The served route is checked in tests/test_served_hostile.py.
"""

from __future__ import annotations

import os
import string
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clip_service.errors import InvalidInput
from clip_service.server.classify import DEFAULT_TEMPLATE, LABEL_SETS, parse_template

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60")) * 20  # cheap: no I/O

PIECES = [
    "{}", "{", "}", "{{", "}}", "{0}", "{1}", "{x}", "{ }", "{!r}", "{!s}", "{!a}", "{!}",
    "{:>99999999}", "{:d}", "{:{}}", "{[0]}", "{.a}", "{0.__class__}", "{0[0]}", "{}{}",
    "a photo of ", "a ", "é", "\n", "%s", "$x", ":", "!", "[", ".",
]  # fmt: skip
templates = st.lists(
    st.one_of(st.sampled_from(PIECES), st.text(max_size=5)), min_size=1, max_size=12
).map("".join)
labels = st.one_of(st.sampled_from(["cat", "{}", "{0}", "{:>9}", "}{", ""]), st.text(max_size=20))


def _one_bare_field(template: str) -> bool:
    try:
        fields = [f[1:] for f in string.Formatter().parse(template) if f[1] is not None]
    except ValueError:
        return False
    return fields == [("", "", None)]


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("FUZZ_RANDOM"))
@given(template=templates, label=labels)
def test_templates_are_accepted_exactly_when_format_would_read_only_the_label(template, label):
    try:
        parsed = parse_template(template)
    except InvalidInput as exc:
        assert exc.field == "template" and "{}" in exc.problem
        assert not _one_bare_field(template)
        return
    assert _one_bare_field(template)
    filled = parsed.fill(label)
    assert filled == template.format(label)
    assert len(filled) <= len(template) + len(label)


@pytest.mark.parametrize(
    "template",
    [
        "{} {0}",  # a second, numbered field: str.format raised ValueError (a 500)
        "{x}",
        "{}{!r}",  # a second field with a conversion: IndexError (a 500)
        "{} {:>9}",
        # One "{}" by substring count, so the old check passed, and 100 MB of padding.
        "{0:>99999999}{{}}",
        "{:>99999999}{{}",
        "{{}}",  # escaped braces only: no field
        "{",
        "a {} b }",
    ],
)
def test_a_template_with_anything_but_one_bare_field_is_refused(template):
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput, match=r"^template: must contain \{\} exactly once"):
            parse_template(template)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # never formatted: "{:>99999999}" would take 100 MB


@pytest.mark.parametrize(
    ("template", "filled"),
    [("a photo of a {}", "a photo of a cat"), ("{{}}{}", "{}cat"), ("{}{{x}}", "cat{x}")],
)
def test_escaped_braces_are_literal_braces(template, filled):
    assert parse_template(template).fill("cat") == filled


def test_the_default_and_the_stored_sets_templates_are_valid():
    for template in [DEFAULT_TEMPLATE, *(s.template for s in LABEL_SETS.values())]:
        assert parse_template(template).fill("x") == template.format("x")
