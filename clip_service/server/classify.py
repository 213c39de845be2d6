"""Zero-shot classification: an image against labels, the caller's or a stored set's.

A label is scored as the model's zero-shot classifier does: the text ``template`` filled
with the label is encoded, and the probabilities follow the model's rule
(:mod:`clip_service.models.ranking`): CLIP's softmax over the group's labels of
``logit_scale * cosine``, or SigLIP's sigmoid of each label's ``logit_scale * cosine +
logit_bias``. Stored sets are encoded once per process and kept.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from clip_service.errors import InvalidInput
from clip_service.models.ranking import rank
from clip_service.server.encoding import ItemEncoder
from clip_service.server.once import Once

DEFAULT_TEMPLATE = "a photo of a {}"
_TEMPLATE_RULE = (
    "must contain {} exactly once and no other replacement field ({0}, {name}, {!r}, "
    "{:spec}); write a literal brace as {{ or }}"
)


@dataclass(frozen=True)
class Template:
    """A label template split at its one ``{}``; filling it joins strings, so nothing in a
    template or a label is ever interpreted by ``str.format``."""

    prefix: str
    suffix: str

    def fill(self, label: str) -> str:
        return f"{self.prefix}{label}{self.suffix}"


def parse_template(template: str, field: str = "template") -> Template:
    """Parse as ``str.format`` would: exactly one bare ``{}``, and nothing else it would read
    (an index, a name, a conversion or a format spec such as ``{:>99999999}``). ``{{`` and
    ``}}`` are literal braces, as in ``str.format``."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:  # a single "{" or "}", an unclosed field
        raise InvalidInput(field, f"{_TEMPLATE_RULE} ({exc})") from None
    fields = [i for i, (_, name, _, _) in enumerate(parts) if name is not None]
    if len(fields) != 1 or parts[fields[0]][1:] != ("", "", None):
        raise InvalidInput(field, _TEMPLATE_RULE)
    # A field's literal text is the text before it; the field is at ``fields[0]``.
    prefix = "".join(literal for literal, *_ in parts[: fields[0] + 1])
    suffix = "".join(literal for literal, *_ in parts[fields[0] + 1 :])
    return Template(prefix, suffix)


@dataclass(frozen=True)
class LabelSet:
    """Named groups of mutually exclusive labels; each group gets its own softmax (under
    the sigmoid rule each label is scored alone)."""

    groups: Mapping[str, tuple[str, ...]]
    template: str = DEFAULT_TEMPLATE


LABEL_SETS: dict[str, LabelSet] = {
    "pets": LabelSet(
        {
            "type": (
                "cat",
                "dog",
                "hamster",
                "rabbit",
                "bird",
                "fish",
                "turtle",
                "snake",
                "lizard",
            ),
            "fur": ("long-hair", "short-hair", "medium-hair"),
        },
        template="a photo of a {} pet",
    ),
    "wearables": LabelSet(
        {
            "category": (
                "t-shirt",
                "shirt",
                "sweater",
                "hoodie",
                "jacket",
                "coat",
                "dress",
                "skirt",
                "jeans",
                "trousers",
                "shorts",
                "suit",
                "sneakers",
                "boots",
                "sandals",
                "high heels",
                "hat",
                "scarf",
                "handbag",
                "sunglasses",
            )
        },
        template="a photo of {}, a type of clothing or accessory",
    ),
}


@dataclass(frozen=True)
class Score:
    label: str
    probability: float
    cosine: float
    group: str | None


class Classifier:
    def __init__(self, items: ItemEncoder) -> None:
        self.items = items
        self._set_vectors = {
            name: Once(lambda name=name: self._encode_set(name)) for name in LABEL_SETS
        }

    async def classify(
        self,
        image_vector: np.ndarray,
        labels: Sequence[str] | None = None,
        label_set: str | None = None,
        template: Template | None = None,
        top_k: int | None = None,
    ) -> list[Score]:
        """The ``top_k`` scores of each group (all if None), most probable first;
        ``labels`` form a single, unnamed group, each filled into ``template`` (default
        ``DEFAULT_TEMPLATE``)."""
        info = await self.items.model_info()
        if label_set is not None:
            groups = {name: list(g) for name, g in LABEL_SETS[label_set].groups.items()}
            vectors = await self._set_vectors[label_set]
        else:
            assert labels is not None
            groups = {None: list(labels)}
            template = template or parse_template(DEFAULT_TEMPLATE)
            texts = [template.fill(label) for label in labels]
            vectors = {None: await self.items.encoder.encode_texts(texts)}
        scores = []
        for name, group in groups.items():
            probabilities, cosines = rank(image_vector[None], vectors[name], info.scorer())
            order = np.argsort(-probabilities[0], kind="stable")[:top_k]
            scores += [
                Score(group[i], float(probabilities[0, i]), float(cosines[0, i]), name)
                for i in order
            ]
        return scores

    async def _encode_set(self, name: str) -> dict[str, np.ndarray]:
        label_set = LABEL_SETS[name]
        template = parse_template(label_set.template)
        return {
            group: await self.items.encoder.encode_texts([template.fill(label) for label in labels])
            for group, labels in label_set.groups.items()
        }
