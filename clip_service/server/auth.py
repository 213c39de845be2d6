"""API keys: with ``API_KEYS`` / ``API_KEYS_FILE`` set, nobody gets in without one.

A key is accepted as ``Authorization: Bearer <key>`` (what OpenAI clients and BentoML's
``token=`` send), ``X-API-Key: <key>``, or as the password of HTTP Basic authentication
(what Weaviate sends for ``CLIP_INFERENCE_API=http://any:<key>@host:3000``). Open without a
key: the health checks (probes carry no secrets), the demo page's static files (a browser
cannot add a header to a page load; the page then asks for a key), and, when the operator
says so, ``/metrics`` and the API docs. Everything else, mounted apps included, answers 401.

Keys are compared as SHA-256 digests with :func:`hmac.compare_digest`, every given key
against every configured key with no early exit, so the time taken says nothing about how
much of a key matched, or which.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Iterable

import click
from starlette.datastructures import Headers

from clip_service.process import hooks

logger = logging.getLogger(__name__)

HEALTH_PATHS = frozenset(
    {"/livez", "/healthz", "/readyz", "/.well-known/live", "/.well-known/ready"}
)
METRICS_PATH = "/metrics"
# BentoML's Swagger UI page, its OpenAPI document, its client schema and their assets.
DOCS_PATHS = frozenset({"/", "/docs.json", "/schema.json"})
DOCS_PREFIXES = ("/static_content/", "/assets/")
UI_PATH = "/ui"
HOW = "send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """The configured keys, and which paths answer without one."""

    def __init__(self, keys: Iterable[str], public_metrics: bool, public_docs: bool) -> None:
        self.digests = tuple(_digest(key) for key in keys)
        self.public_metrics, self.public_docs = public_metrics, public_docs

    def refusal(self, method: str, path: str, headers: Headers) -> str | None:
        """Why this request may not go on (the 401's message), or None when it may."""
        if self.is_open(method, path):
            return None
        given = given_keys(headers)
        if self.accepts(given):
            return None
        problem = "the API key is not valid" if given else f"an API key is required; {HOW}"
        return f"authorization: {problem}"

    def is_open(self, method: str, path: str) -> bool:
        """Whether ``path`` answers without a key."""
        if path in HEALTH_PATHS:
            return True
        if method in ("GET", "HEAD") and (path == UI_PATH or path.startswith(UI_PATH + "/")):
            return True
        if path == METRICS_PATH:
            return self.public_metrics
        return self.public_docs and (path in DOCS_PATHS or path.startswith(DOCS_PREFIXES))

    def accepts(self, given: list[str]) -> bool:
        """Whether any given key is a configured one, in time independent of the keys."""
        matched = False
        for key in given:
            digest = _digest(key)
            for known in self.digests:
                matched |= hmac.compare_digest(digest, known)
        return matched


def given_keys(headers: Headers) -> list[str]:
    """The keys a request carries: a Bearer token or a Basic password, an X-API-Key
    header, or both."""
    keys = []
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        keys.append(token.strip())
    if scheme.lower() == "basic" and (password := _basic_password(token.strip())):
        keys.append(password)
    if api_key := headers.get("x-api-key", "").strip():
        keys.append(api_key)
    return keys


def _basic_password(credentials: str) -> str:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]


def warn_if_open(has_keys: bool) -> None:
    """Log a WARNING when ``bentoml serve`` is about to bind a non-loopback address with
    no API keys set.

    Runs where the service module is imported by ``bentoml serve`` (or ``start-http-server``)
    itself: its ``--host`` is in the command's click context, before any socket is bound
    and before any worker starts. Elsewhere (workers, tests) there is no such option and
    nothing is logged.
    """
    context = click.get_current_context(silent=True)
    if has_keys or context is None or "host" not in context.params:
        return
    host = context.params["host"] or hooks.bentoml_default_host()
    if not _is_loopback(host):
        logger.warning(
            "WARNING: no API keys set and the server binds %s: anyone who can reach this "
            "port can use every route. Set API_KEYS or API_KEYS_FILE, or bind --host "
            "127.0.0.1 (docs/api.md, 'API keys').",
            host,
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve anywhere
        return False
