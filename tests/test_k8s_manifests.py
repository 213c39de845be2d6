"""deploy/k8s: the manifests parse and are wired consistently with the code they run."""

from __future__ import annotations

import importlib
from urllib.parse import urlparse

import kubernetes_validate
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


def test_the_autoscaling_overlay_scales_model_services_on_the_queue_depth_they_export(objects):
    """deploy/k8s/autoscaling: every HPA targets a model-service Deployment of the base and
    reads the gauge the scheduler exports, by labels it has and values they take."""
    from clip_service.metrics import QUEUE_DEPTH
    from clip_service.scheduling import Priority

    (name,) = (family.name for family in QUEUE_DEPTH.describe())
    overlay = K8S / "autoscaling"
    resources = yaml.safe_load((overlay / "kustomization.yaml").read_text())["resources"]
    assert ".." in resources
    hpas = [
        doc
        for resource in resources
        if resource != ".."
        for doc in yaml.safe_load_all((overlay / resource).read_text())
    ]
    assert {hpa["spec"]["scaleTargetRef"]["name"] for hpa in hpas} == set(MODEL_SERVICES)
    for hpa in hpas:
        spec = hpa["spec"]
        assert ("Deployment", spec["scaleTargetRef"]["name"]) in objects
        assert (
            hpa["apiVersion"] == "autoscaling/v2"
            and 1 <= spec["minReplicas"] <= spec["maxReplicas"]
        )
        (metric,) = spec["metrics"]
        assert metric["pods"]["metric"]["name"] == name
        for expression in metric["pods"]["metric"]["selector"]["matchExpressions"]:
            assert set(expression["values"]) <= {p.value for p in Priority}
            assert Priority.BACKGROUND.value not in expression["values"]  # the start-up build
            for value in expression["values"]:  # a ValueError for a label the gauge lacks
                QUEUE_DEPTH.labels(**{"service": "ClipEncoder", expression["key"]: value})
    rules = yaml.safe_load((overlay / "prometheus-adapter-rules.yaml").read_text())["rules"]
    assert [rule["name"]["as"] for rule in rules] == [name]
    assert rules[0]["seriesQuery"].startswith(name + "{")


def _manifests() -> list[dict]:
    """Every Kubernetes object deploy/k8s and its autoscaling overlay apply."""
    found = []
    for folder in (K8S, K8S / "autoscaling"):
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        for resource in kustomization["resources"]:
            if resource != "..":
                found += list(yaml.safe_load_all((folder / resource).read_text()))
    return found


@pytest.mark.parametrize(
    "manifest", _manifests(), ids=lambda m: f"{m['kind']}/{m['metadata']['name']}"
)
def test_manifests_match_the_kubernetes_schemas(manifest):
    """Strict (an unknown or misspelt field fails), offline: kubernetes-validate's bundled
    schemas of the newest Kubernetes it knows."""
    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)


def test_the_schema_check_rejects_a_misspelt_field():
    (deployment,) = [m for m in _manifests() if m["kind"] == "Deployment"][:1]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)
