"""API keys on a served instance: clients with keys, every route without one, CORS, the
demo page asking for a key, and the start-up warning for an open server."""

from __future__ import annotations

import subprocess
import sys

import bentoml
import httpx
import openai
import pytest
from selenium.webdriver.common.by import By

from clip_service.testing.hostile_corpus import error_message
from tests.conftest import REPO, free_port, image_bytes, make_image, serve_env, served
from tests.test_ui_browser import click, wait_for, wait_rows, wait_text

pytestmark = pytest.mark.served

ORIGIN = "http://app.example"
KEYS = ("key-one", "key-two")
FILE_KEY = "key-from-file"
HEALTH = {
    ("GET", path)
    for path in ("/livez", "/healthz", "/readyz", "/.well-known/live", "/.well-known/ready")
}
# The demo page's own files: a browser cannot send a header with a page load.
UI_FILES = {("GET", f"/ui{page}") for page in ("", "/", "/index.html", "/app.js", "/api.js")}
# Routes that the OpenAPI document does not list: BentoML's own and the mounted app's.
NOT_IN_OPENAPI = {
    ("GET", "/"),
    ("GET", "/docs.json"),
    ("GET", "/schema.json"),
    ("GET", "/metrics"),
    ("GET", "/static_content/swagger-ui.css"),
    ("GET", "/model"),
    ("POST", "/embeddings"),
    *HEALTH,
    *UI_FILES,
}


@pytest.fixture(scope="module")
def url(tiny_models, tmp_path_factory):
    home = tmp_path_factory.mktemp("bentoml-auth")
    keys_file = home / "api-keys"
    keys_file.write_text(f"# one key a line\n\n{FILE_KEY}\n")
    with served(
        home,
        CLIP_MODEL=str(tiny_models["hf-clip"]),
        CAPTION_MODEL=str(tiny_models["blip"]),
        API_KEYS=",".join(KEYS),
        API_KEYS_FILE=str(keys_file),
        CORS_ALLOW_ORIGINS=ORIGIN,
    ) as url:
        yield url


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_openai_client_with_the_right_key_works_and_a_wrong_one_is_refused(url):
    for key in (*KEYS, FILE_KEY):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        answer = client.embeddings.create(model="clip", input=["a photo of a cat"])
        assert len(answer.data) == 1 and answer.data[0].embedding
    # (The client itself refuses to run without a key; test_both_header_forms_and_no_key
    # sends none.)
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="key-three", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.embeddings.create(model="clip", input=["a photo of a cat"])
    assert refused.value.status_code == 401
    assert refused.value.body["message"] == "authorization: the API key is not valid"
    assert refused.value.code == "invalid_api_key"


def test_both_header_forms_and_no_key(url):
    items = [{"text": "a cat"}]
    for headers in (
        bearer("key-two"),
        {"x-api-key": FILE_KEY},
        {"authorization": "bearer key-one"},
    ):
        assert httpx.post(f"{url}/encode", json=items, headers=headers).status_code == 200
    # Weaviate with CLIP_INFERENCE_API=http://weaviate:<key>@host: the key as Basic password.
    assert httpx.get(f"{url}/meta", auth=("weaviate", KEYS[0])).status_code == 200
    assert httpx.get(f"{url}/meta", auth=("weaviate", "wrong")).status_code == 401
    missing = httpx.post(f"{url}/encode", json=items)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"].startswith("authorization: an API key is required")


def test_bentoml_client_with_a_token(url):
    with bentoml.SyncHTTPClient(url, token=KEYS[0]) as client:
        assert len(client.encode([{"text": "a cat"}])) == 1


def request(url: str, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    body = {} if method == "POST" else None
    return httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=30)


def test_no_route_answers_without_a_key_but_the_health_checks_and_the_page(url):
    document = httpx.get(f"{url}/docs.json", headers=bearer(KEYS[0])).json()
    in_openapi = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert {("POST", "/encode"), ("POST", "/v1/embeddings"), ("POST", "/tag")} <= in_openapi
    routes = in_openapi | NOT_IN_OPENAPI
    answers = {route: request(url, *route, headers={}) for route in sorted(routes)}
    open_routes = {route for route, answer in answers.items() if answer.status_code != 401}
    assert open_routes == HEALTH | UI_FILES
    for route in routes - open_routes:
        message = error_message(answers[route].json(), route[1])
        assert message is not None and message.startswith("authorization: "), route
        assert answers[route].headers["www-authenticate"] == "Bearer", route
    # The page's open prefix leads nowhere else (uvicorn decodes %2e%2e, nothing normalises).
    escape = httpx.get(f"{url}/ui/%2e%2e/model")
    assert escape.status_code == 404 and "spec" not in escape.text
    # With a key every route is reached (the walk above is not vacuous).
    for route in routes:
        assert request(url, *route, headers=bearer(KEYS[1])).status_code != 401, route


def test_cors_preflight_needs_no_key_and_401s_carry_cors(url):
    preflight = httpx.options(
        f"{url}/encode",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    refused = httpx.post(f"{url}/encode", json=[{"text": "x"}], headers={"origin": ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    assert "www-authenticate" in refused.headers["access-control-expose-headers"]


def test_demo_page_asks_for_a_key_and_keeps_it(browser, url, tmp_path):
    browser.get(f"{url}/ui/")
    dialog = browser.find_element(By.ID, "key-dialog")
    wait_for(browser, dialog.is_displayed)  # GET /model answered 401
    assert wait_text(browser, "#key-message", bool) == "This service needs an API key."
    click(browser, "#key-form button[value=cancel]")  # no key: the call fails readably
    wait_text(browser, "#model-info", lambda text: text == "This service needs an API key (401).")
    assert not dialog.is_displayed()

    browser.refresh()
    dialog = browser.find_element(By.ID, "key-dialog")
    wait_for(browser, dialog.is_displayed)
    key_input = browser.find_element(By.ID, "key-input")
    key_input.send_keys("not-a-key")
    click(browser, "#key-form button[value=ok]")
    wait_text(browser, "#key-message", lambda text: text.startswith("The service refused"))
    key_input.send_keys(FILE_KEY)
    click(browser, "#key-form button[value=ok]")
    wait_text(browser, "#model-info", lambda text: text.startswith("Model "))
    assert not dialog.is_displayed()
    stored = browser.execute_script("return sessionStorage.getItem('clip-service-api-key')")
    assert stored == FILE_KEY

    # Later calls send the key: rank the page's four texts against an image.
    picture = tmp_path / "noise.png"
    picture.write_bytes(image_bytes(make_image(3, (64, 64))))
    browser.find_element(By.ID, "image-file").send_keys(str(picture))
    click(browser, "#rank-form button")
    assert len(wait_rows(browser, "#rank-output", 4)) == 4

    # Reloaded, the page uses the key it kept and does not ask again.
    browser.refresh()
    wait_text(browser, "#model-info", lambda text: text.startswith("Model "))
    assert not browser.find_element(By.ID, "key-dialog").is_displayed()


def _serve_until_model_fails(tmp_path, host: str, **env: str) -> subprocess.CompletedProcess:
    """`bentoml serve --host HOST` with a CLIP model that cannot load: the service module is
    imported (and any warning logged) before BentoML binds a socket, then it exits."""
    command = [sys.executable, "-m", "bentoml", "serve", "--host", host, "--port", str(free_port())]
    return subprocess.run(
        command,
        cwd=REPO,
        env=serve_env(tmp_path, CLIP_MODEL="/no/such/model", **env),
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize(
    ("env", "warned"), [({}, True), ({"API_KEYS": "a-key"}, False)], ids=["open", "keys"]
)
def test_start_up_warns_when_open_on_every_address(tmp_path, tiny_models, env, warned):
    result = _serve_until_model_fails(
        tmp_path, "0.0.0.0", CAPTION_MODEL=str(tiny_models["blip"]), **env
    )
    assert result.returncode != 0 and "'/no/such/model'" in result.stderr
    lines = [line for line in result.stderr.splitlines() if "no API keys set" in line]
    assert len(lines) == (1 if warned else 0), result.stderr[-3000:]
    if warned:
        assert "WARNING" in lines[0] and "binds 0.0.0.0" in lines[0]
