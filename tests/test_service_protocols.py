"""The entry types its model-service clients with Protocols; they must say what the services
serve. "Go to definition" from a call in ``clip_service.server`` lands on the Protocol: this
test keeps it the same as the ``runners/`` API it stands for."""

from __future__ import annotations

import inspect

import pytest

from clip_service.server.custom_tables import CustomTablesEncoder
from clip_service.server.encoding import EncoderClient
from clip_service.server.interrogation import CaptionerClient, InterrogatingEncoder
from runners.blip_captioner import BlipCaptioner
from runners.clip_encoder import ClipEncoder

CLIENTS = [
    (EncoderClient, ClipEncoder),
    (InterrogatingEncoder, ClipEncoder),
    (CustomTablesEncoder, ClipEncoder),
    (CaptionerClient, BlipCaptioner),
]


def methods(protocol: type) -> list[str]:
    return [
        name
        for name, value in vars(protocol).items()
        if inspect.isfunction(value) and not name.startswith("_")
    ]


def parameters(function: object) -> list[tuple[str, object]]:
    signature = inspect.signature(function)  # type: ignore[arg-type]
    return [(p.name, p.annotation) for p in signature.parameters.values() if p.name != "self"]


@pytest.mark.parametrize(
    ("protocol", "method"),
    [(protocol, name) for protocol, _ in CLIENTS for name in methods(protocol)],
    ids=lambda value: getattr(value, "__name__", value),
)
def test_each_client_method_is_the_services_api(protocol: type, method: str) -> None:
    service = dict(CLIENTS)[protocol]
    assert method in service.apis, f"{service.name} serves no API {method!r}"
    served = service.apis[method].func
    assert parameters(getattr(protocol, method)) == parameters(served)
    declared = inspect.signature(getattr(protocol, method)).return_annotation
    returned = inspect.signature(served).return_annotation
    # A service may answer None where the entry never asks (e.g. no interrogation served).
    assert returned in (declared, f"{declared} | None")


def test_the_protocols_take_no_untyped_keywords() -> None:
    for protocol, _ in CLIENTS:
        for name in methods(protocol):
            kinds = {p.kind for p in inspect.signature(getattr(protocol, name)).parameters.values()}
            assert inspect.Parameter.VAR_KEYWORD not in kinds, f"{protocol.__name__}.{name}"
