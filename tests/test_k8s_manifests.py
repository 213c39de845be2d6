"""deploy/k8s: the manifests parse and are wired consistently with the code they run."""

from __future__ import annotations

import importlib
from urllib.parse import urlparse

import pytest
import yaml

from clip_service.settings import Settings
from tests.conftest import REPO

K8S = REPO / "deploy" / "k8s"
MODEL_SERVICES = {"clip-encoder": "ClipEncoder", "blip-captioner": "BlipCaptioner"}


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    found = {}
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            found[doc["kind"], doc["metadata"]["name"]] = doc
    return found


def _container(objects: dict, name: str) -> dict:
    (container,) = objects["Deployment", name]["spec"]["template"]["spec"]["containers"]
    return container


def test_each_service_is_a_deployment_with_a_service(objects):
    names = {"clip-api", *MODEL_SERVICES}
    assert {n for k, n in objects if k == "Deployment"} == names
    assert {n for k, n in objects if k == "Service"} == names
    for name in names:
        deployment, service = objects["Deployment", name], objects["Service", name]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert service["spec"]["selector"].items() <= pod_labels.items()
        port_names = {p["name"] for p in _container(objects, name)["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


def test_probes_and_gpus(objects):
    for name in ("clip-api", *MODEL_SERVICES):
        container = _container(objects, name)
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        assert (gpus == 1) == (name in MODEL_SERVICES), name


def test_commands_name_real_services(objects):
    for name in ("clip-api", *MODEL_SERVICES):
        args = _container(objects, name)["args"]
        assert args[:2] == ["bentoml", "serve"]
        module, service = args[2].split(":")
        assert getattr(importlib.import_module(module), service).name == (
            MODEL_SERVICES.get(name, "ClipApi")
        )


def test_settings_are_real_and_urls_reach_the_model_services(objects):
    config = objects["ConfigMap", "clip-service-config"]["data"]
    fields = {name.upper() for name in Settings.model_fields}
    for name in ("clip-api", *MODEL_SERVICES):
        env = [e["name"] for e in _container(objects, name).get("env", [])]
        assert set(env) <= fields, env
    assert {k for k in config if not k.startswith("BENTOML_")} <= fields
    for setting, service in (
        ("CLIP_ENCODER_URL", "clip-encoder"),
        ("CAPTIONER_URL", "blip-captioner"),
    ):
        url = urlparse(config[setting])
        assert url.hostname == service
        assert url.port in {p["port"] for p in objects["Service", service]["spec"]["ports"]}
