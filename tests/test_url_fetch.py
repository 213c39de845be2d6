"""``fetch_image_url`` against real HTTP(S) servers on 127.0.0.1, with a fake DNS table.

``socket.getaddrinfo`` is replaced for every test here: names map through ``DNS`` (fake public
names pointing at loopback), IPs in any spelling pass, any other name fails, so no test can
look up a real name. ``httpx.AsyncClient.send`` is wrapped to fail any request whose URL is not a
loopback IP: connections only ever go to an address the fetcher checked, never to a name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from clip_service.errors import InvalidInput, PayloadTooLarge
from clip_service.inputs import url_fetch
from clip_service.inputs.url_fetch import UrlPolicy, fetch_image_url
from tests.conftest import image_bytes, make_image

IMAGE = image_bytes(make_image(7, (32, 24)))
LOOPBACK = ("127.0.0.1",)
DNS = {
    "public.example": ["127.0.0.1"],
    "rebind.example": ["127.0.0.1"],
    "other.example": ["127.0.0.1"],
    "intranet.example": ["10.1.2.3"],
    "mixed.example": ["93.184.215.14", "10.1.2.3"],
    "refused-first.example": ["127.0.0.2", "127.0.0.1"],
    "refused-last.example": ["127.0.0.1", "127.0.0.2"],
}
SLOW_DNS = "slow-dns.example"


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.0: every response closes its connection, so a body may run until the close."""

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/image.png":
            self._reply(200, IMAGE)
        elif path == "/host":
            self._reply(200, self.headers["Host"].encode())
        elif path == "/redirect":
            self._reply(302, b"", location=query.removeprefix("to="))
        elif path.startswith("/hops/"):
            left = int(path.removeprefix("/hops/"))
            self._reply(302, b"", location=f"/hops/{left - 1}") if left else self._reply(200, IMAGE)
        elif path == "/slow":
            self._headers(200, length=100)
            for _ in range(100):
                time.sleep(0.1)
                self.wfile.write(b"x")
        elif path == "/huge":
            self._headers(200, length=10**12)
            self.wfile.write(b"x" * 1024)
        elif path == "/stream":
            self._headers(200)
            for _ in range(64):
                self.wfile.write(b"x" * 65536)
        else:
            self._reply(404, b"not here")

    def _reply(self, status: int, body: bytes, location: str | None = None) -> None:
        self._headers(status, length=len(body), location=location)
        self.wfile.write(body)

    def _headers(self, status: int, length: int | None = None, location: str | None = None):
        self.send_response(status)
        if length is not None:
            self.send_header("Content-Length", str(length))
        if location is not None:
            self.send_header("Location", location)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        """Quiet."""


class KeepAliveHandler(Handler):
    """HTTP/1.1: connections stay open between responses that declare their length."""

    protocol_version = "HTTP/1.1"


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up early (the point of several tests) is no error."""


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    server = QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every lookup goes through ``DNS``; returns the list of names looked up."""
    real_getaddrinfo = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(host: str, port: object, family=0, type=0, proto=0, flags=0) -> list:
        lookups.append(host)
        if host == SLOW_DNS:
            time.sleep(1)
        numeric = flags | socket.AI_NUMERICHOST  # any IP spelling parses; no name resolves
        return [
            info
            for address in DNS.get(host, [host])
            for info in real_getaddrinfo(address, port, family, type, proto, numeric)
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_send = httpx.AsyncClient.send

    async def send(self: httpx.AsyncClient, request: httpx.Request, **kwargs: object):
        assert ipaddress.ip_address(request.url.host).is_loopback, request.url
        return await real_send(self, request, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "send", send)


def fetch(url: str, **policy: object) -> bytes:
    return asyncio.run(fetch_image_url(url, "img_uri", UrlPolicy(**policy)))


def refused(url: str, **policy: object) -> str:
    with pytest.raises(InvalidInput) as caught:
        fetch(url, **policy)
    assert type(caught.value) is InvalidInput
    return caught.value.problem


def test_loopback_is_refused_by_default(base):
    problem = refused(f"{base}/image.png")
    assert problem == (
        "refused: 127.0.0.1 resolves to a private or local address (set URL_ALLOW to permit it)"
    )


@pytest.mark.parametrize("allow", [LOOPBACK, ("127.0.0.0/8",), ("10.0.0.0/8", " 127.0.0.1 ")])
def test_allowed_address_is_fetched(base, allow):
    assert fetch(f"{base}/image.png", allow=allow) == IMAGE


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:169.254.169.254]",
        "[::127.0.0.1]",
        "2130706433",
        "0x7f.1",
        "127.1",
        "[fc00::1]",
        "[fe80::1]",
        "[::]",
        "[ff02::1]",
        "intranet.example",
        "metadata.google.internal",
        "METADATA",
        "metadata.google.internal.",
    ],
)
def test_internal_hosts_are_refused(host):
    assert refused(f"http://{host}/latest/meta-data/").startswith("refused: ")


def test_metadata_names_are_refused_without_a_lookup(fake_dns):
    refused("http://metadata.google.internal/computeMetadata/v1/")
    assert fake_dns == []


def test_any_internal_address_refuses_the_host():
    """A public address beside a private one does not make the host safe (nothing connects)."""
    assert refused("http://mixed.example/a.png").startswith("refused: mixed.example resolves")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://public.example/a.png", "only http and https URLs are accepted"),
        ("file:///etc/passwd", "only http and https URLs are accepted"),
        ("gopher://127.0.0.1:6379/_INFO", "only http and https URLs are accepted"),
        ("data:image/png;base64,AAAA", "only http and https URLs are accepted"),
        ("/image.png", "only http and https URLs are accepted"),
        ("http:///image.png", "URL has no host"),
        ("http://user:pw@public.example/a.png", "URLs with user:password@ are not accepted"),
        ("http://[::1/", "not a valid URL"),
        ("http://public.example/" + "a" * 8192, "URL longer than 8192 characters"),
        ("http://no-such-name.example/a.png", "could not resolve no-such-name.example"),
    ],
)
def test_bad_urls_are_refused(url, problem):
    assert refused(url, allow=("public.example",)) == problem


def test_connects_to_the_checked_address_with_the_original_host(port, fake_dns):
    """One lookup, a connection to its IP, and the name still sent as ``Host``."""
    body = fetch(f"http://public.example:{port}/host", allow=("public.example",))
    assert body == f"public.example:{port}".encode()
    assert fake_dns == ["public.example"]


@pytest.mark.parametrize("host", ["refused-first.example", "refused-last.example"])
def test_the_first_checked_address_that_accepts_is_used(port, host):
    """Nothing listens on 127.0.0.2 (as on an IPv6 address without a route to it)."""
    assert fetch(f"http://{host}:{port}/image.png", allow=(host,)) == IMAGE


def test_environment_proxies_are_ignored(base, monkeypatch):
    """A proxy would resolve the name again; the checked address is connected to directly."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    assert fetch(f"{base}/image.png", allow=LOOPBACK) == IMAGE


def test_redirects_are_followed(base):
    assert fetch(f"{base}/redirect?to=/image.png", allow=LOOPBACK) == IMAGE
    assert fetch(f"{base}/hops/3", allow=LOOPBACK, max_redirects=3) == IMAGE


def test_too_many_redirects(base):
    problem = refused(f"{base}/hops/4", allow=LOOPBACK, max_redirects=3)
    assert problem == "the URL redirected more than 3 times"
    assert refused(f"{base}/hops/1", allow=LOOPBACK, max_redirects=0).startswith("the URL")


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.1:{port}/image.png", "http://rebind.example:{port}/image.png"],
)
def test_every_redirect_hop_is_checked(port, target):
    """The first hop is allowed by name; a redirect to loopback (by IP or name) is not."""
    url = f"http://public.example:{port}/redirect?to={target.format(port=port)}"
    assert refused(url, allow=("public.example",)).startswith("refused: ")
    assert fetch(url, allow=("public.example", "127.0.0.1")) == IMAGE


@pytest.mark.parametrize("scheme", ["file", "ftp", "gopher"])
def test_redirect_to_another_scheme_is_refused(base, scheme):
    problem = refused(f"{base}/redirect?to={scheme}://public.example/x", allow=LOOPBACK)
    assert problem == "only http and https URLs are accepted"


def test_http_error_status(base):
    assert refused(f"{base}/missing", allow=LOOPBACK) == "fetching the URL gave HTTP 404"


@pytest.mark.parametrize("path", ["/huge", "/stream"])
def test_size_limit(base, path):
    """``/huge`` declares its length, ``/stream`` does not and is counted as it arrives."""
    with pytest.raises(PayloadTooLarge, match="image larger than 100000 bytes"):
        fetch(f"{base}{path}", allow=LOOPBACK, max_bytes=100_000)


def test_whole_fetch_timeout(base):
    """``/slow`` sends a byte every 0.1 s: no single read stalls, the whole fetch does."""
    problem = refused(f"{base}/slow", allow=LOOPBACK, timeout_s=0.5)
    assert problem == "fetching the URL timed out after 0.5 s"


def test_timeout_covers_name_resolution():
    async def timed() -> None:
        with pytest.raises(InvalidInput) as caught:
            await fetch_image_url(f"http://{SLOW_DNS}/a.png", "f", UrlPolicy(timeout_s=0.2))
        assert caught.value.problem == "fetching the URL timed out after 0.2 s"

    asyncio.run(timed())


def test_connection_errors_are_invalid_input(port):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    problem = refused(f"http://127.0.0.1:{closed_port}/image.png", allow=LOOPBACK)
    assert problem == "could not fetch the URL (ConnectError)"


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, list]]:
    """An https server on 127.0.0.1 whose certificate, from a test CA, names public.example."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificates")
    tmp = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", tmp / "ca.key", "-out", tmp / "ca.pem",
             "-days", "2", "-subj", "/CN=url-fetch test CA")  # fmt: skip
    _openssl("req", *ec, "-keyout", tmp / "leaf.key", "-out", tmp / "leaf.csr",
             "-subj", "/CN=public.example")  # fmt: skip
    (tmp / "leaf.ext").write_text(
        "subjectAltName=DNS:public.example\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    _openssl("x509", "-req", "-in", tmp / "leaf.csr", "-CA", tmp / "ca.pem",
             "-CAkey", tmp / "ca.key", "-CAcreateserial", "-out", tmp / "leaf.pem",
             "-days", "2", "-extfile", tmp / "leaf.ext")  # fmt: skip
    server_names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp / "leaf.pem", tmp / "leaf.key")
    context.sni_callback = lambda _sock, name, _context: server_names.append(name)
    server = QuietServer(("127.0.0.1", 0), KeepAliveHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], tmp / "ca.pem", server_names
    server.shutdown()
    server.server_close()


@pytest.fixture
def trust_test_ca(monkeypatch: pytest.MonkeyPatch, tls_server) -> None:
    context = ssl.create_default_context(cafile=tls_server[1])
    monkeypatch.setattr(url_fetch, "_tls_context", lambda: context)


def test_https_verifies_the_host_name_while_connecting_to_the_ip(tls_server, trust_test_ca):
    port, _, server_names = tls_server
    server_names.clear()
    assert fetch(f"https://public.example:{port}/image.png", allow=("public.example",)) == IMAGE
    assert server_names == ["public.example"]


@pytest.mark.parametrize("host", ["other.example", "127.0.0.1"])
def test_https_refuses_a_certificate_for_another_name(tls_server, trust_test_ca, host):
    problem = refused(f"https://{host}:{tls_server[0]}/image.png", allow=(host,))
    assert problem == "could not fetch the URL (ConnectError)"


def test_https_redirect_to_another_name_gets_its_own_handshake(tls_server, trust_test_ca):
    """The keep-alive connection verified for public.example must not serve other.example."""
    port, _, server_names = tls_server
    server_names.clear()
    url = f"https://public.example:{port}/redirect?to=https://other.example:{port}/image.png"
    problem = refused(url, allow=("public.example", "other.example"))
    assert problem == "could not fetch the URL (ConnectError)"
    assert server_names == ["public.example", "other.example"]
