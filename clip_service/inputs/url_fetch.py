"""Fetch user-supplied image URLs without letting them reach the server's own network (SSRF).

A URL in a request could name the cloud metadata service (169.254.169.254), an admin port on
loopback or a host on the private network. So, at each hop, the host is resolved once and
every address it resolves to is checked; the connection then goes to a checked address, never
to the name, so a second DNS answer (DNS rebinding) cannot swap in another address:

* the request URL carries the IP, and the ``Host`` header the original ``host[:port]``;
* for https, httpx's ``sni_hostname`` request extension sends the original host name in the
  TLS handshake, and the certificate is verified against that name, not against the IP;
* the client keeps no idle connection: a reused one, verified for one host, could serve the
  next hop to another host at the same address;
* ``trust_env=False``: an environment proxy would resolve the name again, on its side.

Redirects are followed by hand, each hop checked like the first. One ``asyncio.timeout``
bounds the whole fetch, from the first DNS lookup to the last byte of the last hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
import ssl
from dataclasses import dataclass

import httpx

from clip_service.errors import InvalidInput, PayloadTooLarge

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_CHARS = 8192
_METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class UrlPolicy:
    """Limits for one fetch.

    ``allow`` lists host names (exact, case-insensitive), IPs or CIDRs that may be fetched
    even though they are private or local: an internal image store, say.
    """

    timeout_s: float = 10.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 3
    allow: tuple[str, ...] = ()


async def fetch_image_url(url: str, field: str, policy: UrlPolicy) -> bytes:
    """GET ``url`` under ``policy``; every failure is an ``InvalidInput`` (400) or a 413."""
    try:
        async with asyncio.timeout(policy.timeout_s):
            return await _fetch(url, field, policy)
    except TimeoutError:
        message = f"fetching the URL timed out after {policy.timeout_s:g} s"
        raise InvalidInput(field, message) from None
    except httpx.HTTPError as exc:
        raise InvalidInput(field, f"could not fetch the URL ({type(exc).__name__})") from None


async def _fetch(url: str, field: str, policy: UrlPolicy) -> bytes:
    allow = _AllowList.parse(policy.allow)
    base: httpx.URL | None = None
    async with httpx.AsyncClient(
        timeout=None,  # the asyncio.timeout around the whole fetch is the one deadline
        trust_env=False,
        verify=_tls_context(),
        limits=httpx.Limits(max_keepalive_connections=0),
    ) as client:
        for _ in range(policy.max_redirects + 1):
            target = _parse_url(url, field, base)
            addresses = await _checked_addresses(target.raw_host.decode("ascii"), field, allow)
            response = await _send(client, target, addresses)
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECT_STATUSES and location:
                    url, base = location, target
                    continue
                if response.status_code != 200:
                    raise InvalidInput(field, f"fetching the URL gave HTTP {response.status_code}")
                return await _read_body(response, field, policy.max_bytes)
            finally:
                await response.aclose()
    raise InvalidInput(field, f"the URL redirected more than {policy.max_redirects} times")


def _parse_url(url: str, field: str, base: httpx.URL | None) -> httpx.URL:
    """``url`` (relative to ``base``, for a redirect's Location) if it is one we may fetch."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidInput(field, f"URL longer than {MAX_URL_CHARS} characters")
    try:
        target = base.join(url) if base else httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise InvalidInput(field, "not a valid URL") from None
    if target.scheme not in ("http", "https"):
        raise InvalidInput(field, "only http and https URLs are accepted")
    if not target.host:
        raise InvalidInput(field, "URL has no host")
    if target.userinfo:
        raise InvalidInput(field, "URLs with user:password@ are not accepted")
    return target


@dataclass(frozen=True)
class _AllowList:
    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: tuple[str, ...]) -> _AllowList:
        """Entries that parse as an IP or CIDR are networks; the rest are host names."""
        hosts, networks = set(), []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                hosts.add(entry.strip().lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def covers(self, address: IPAddress) -> bool:
        address = _unmap(address)
        return any(address.version == net.version and address in net for net in self.networks)


async def _checked_addresses(host: str, field: str, allow: _AllowList) -> list[IPAddress]:
    """Where ``host`` resolves to, refused if any of it is internal and not allowed."""
    host = host.rstrip(".")
    if host in allow.hosts:
        return await _resolve(host, field)
    if host in _METADATA_HOSTS:
        raise InvalidInput(field, f"refused: {host} is a cloud metadata host")
    addresses = await _resolve(host, field)
    if any(_is_internal(address) and not allow.covers(address) for address in addresses):
        raise InvalidInput(
            field,
            f"refused: {host} resolves to a private or local address (set URL_ALLOW to permit it)",
        )
    return addresses


async def _resolve(host: str, field: str) -> list[IPAddress]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        raise InvalidInput(field, f"could not resolve {host}") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


def _unmap(address: IPAddress) -> IPAddress:
    """``::ffff:10.0.0.1`` reaches 10.0.0.1, so it is judged as 10.0.0.1."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _is_internal(address: IPAddress) -> bool:
    """Anything but a public unicast address.

    ``is_global`` is False for loopback, private (RFC 1918, ULA fc00::/7), link-local
    (169.254/16 with the metadata address, fe80::/10), unspecified, shared 100.64/10 and the
    documentation ranges; multicast and reserved addresses need their own checks.
    """
    address = _unmap(address)
    return not address.is_global or address.is_multicast or address.is_reserved


async def _send(
    client: httpx.AsyncClient, target: httpx.URL, addresses: list[IPAddress]
) -> httpx.Response:
    """Open ``target`` at the first checked address that accepts a connection."""
    headers = {"Host": target.netloc.decode("ascii"), "Accept-Encoding": "identity"}
    extensions = {"sni_hostname": target.raw_host.decode("ascii").rstrip(".")}

    def request_to(address: IPAddress) -> httpx.Request:
        url = target.copy_with(host=str(address))
        return client.build_request("GET", url, headers=headers, extensions=extensions)

    for address in addresses[:-1]:
        with contextlib.suppress(httpx.ConnectError):
            return await client.send(request_to(address), stream=True)
    return await client.send(request_to(addresses[-1]), stream=True)


async def _read_body(response: httpx.Response, field: str, max_bytes: int) -> bytes:
    """The body, refused as soon as its declared or counted size passes ``max_bytes``.

    The raw bytes are read: ``Accept-Encoding: identity`` was asked for, and a server that
    compresses anyway gets its body passed on undecoded (and then found unreadable), so no
    gzip bomb is ever inflated here.
    """
    message = f"image larger than {max_bytes} bytes"
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(field, message)
    chunks, size = [], 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(field, message)
        chunks.append(chunk)
    return b"".join(chunks)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verifying context (certifi, or SSL_CERT_FILE/DIR), built once."""
    return httpx.create_ssl_context()
