"""deploy/k8s: the manifests parse and are wired consistently with the code they run."""

from __future__ import annotations

import importlib
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from clip_service.settings import Settings
from tests.conftest import REPO

K8S = REPO / "deploy" / "k8s"
MODEL_SERVICES = {"clip-encoder": "ClipEncoder", "blip-captioner": "BlipCaptioner"}
# The Deployments that keep state a second replica must see: jobs (the entry) and custom
# label tables (the encoder). The settings naming where it lives without REDIS_URL.
SHARE_STATE = ("clip-api", "clip-encoder")
STATE_PATHS = ("JOBS_DB", "CUSTOM_TABLES_DIR")
IMAGE_HOME = PurePosixPath("/home/bentoml")  # the Bento image's user's home


def _resources(folder: Path, visited: tuple[Path, ...] = ()) -> list[dict]:
    """The objects a kustomization applies, through the kustomizations it builds on. As
    kustomize, refuses a cycle: a folder built on a folder that contains one it came from."""
    folder = folder.resolve()
    for seen in visited:
        assert folder != seen and folder not in seen.parents, f"a cycle: {folder} holds {seen}"
    found = []
    for resource in yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]:
        path = folder / resource
        if path.is_dir():
            found += _resources(path, (*visited, folder))
        else:
            found += list(yaml.safe_load_all(path.read_text()))
    return found


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in _resources(K8S)}


def _container(objects: dict, name: str) -> dict:
    (container,) = objects["Deployment", name]["spec"]["template"]["spec"]["containers"]
    return container


def test_each_service_is_a_deployment_with_a_service(objects):
    names = {"clip-api", *MODEL_SERVICES}
    assert {n for k, n in objects if k == "Deployment"} == names
    assert {n for k, n in objects if k == "Service"} == names | {"redis"}
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
        assert set(env) - {"HF_HOME"} <= fields, env  # and Hugging Face's cache
    assert {k for k in config if not k.startswith("BENTOML_")} <= fields
    for setting, service in (
        ("CLIP_ENCODER_URL", "clip-encoder"),
        ("CAPTIONER_URL", "blip-captioner"),
    ):
        url = urlparse(config[setting])
        assert url.hostname == service
        assert url.port in {p["port"] for p in objects["Service", service]["spec"]["ports"]}


def _environment(objects: dict, container: dict) -> dict[str, str]:
    """A container's environment: its ConfigMaps' data, then its own env entries."""
    env = {}
    for source in container.get("envFrom", []):
        env.update(objects["ConfigMap", source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def _state_path(env: dict[str, str], setting: str) -> PurePosixPath:
    """Where a container keeps a kind of state without REDIS_URL: its setting, or the
    default under the image's home."""
    if setting in env:
        return PurePosixPath(env[setting])
    default = Settings.model_fields[setting.lower()].default
    return IMAGE_HOME / Path(default).relative_to(Path.home())


def test_replicas_share_their_state_through_the_redis_service(objects):
    """Entry and encoder pods get the same REDIS_URL, naming the redis Service's port."""
    urls = {
        name: _environment(objects, _container(objects, name)).get("REDIS_URL")
        for name in SHARE_STATE
    }
    assert None not in urls.values(), urls
    assert len(set(urls.values())) == 1, urls
    url = urlparse(urls["clip-api"])
    service = objects["Service", "redis"]["spec"]
    assert (url.scheme, url.hostname) == ("redis", "redis")
    (port,) = [p for p in service["ports"] if p["port"] == url.port]
    redis = objects["StatefulSet", "redis"]["spec"]
    pod = redis["template"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    assert redis["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}


def test_redis_keeps_its_data_on_a_persistent_volume(objects):
    redis = objects["StatefulSet", "redis"]["spec"]
    assert redis["replicas"] == 1 and redis["serviceName"] == "redis"
    (container,) = redis["template"]["spec"]["containers"]
    args = container["args"]
    assert args[0] == "redis-server"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--protected-mode") + 1] == "no"  # clients are other pods
    data = args[args.index("--dir") + 1]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == data]
    claims = {c["metadata"]["name"]: c["spec"] for c in redis["volumeClaimTemplates"]}
    assert mount["name"] in claims
    assert claims[mount["name"]]["resources"]["requests"]["storage"]
    assert not redis["template"]["spec"].get("volumes")  # no emptyDir beside it


def test_no_state_on_an_empty_dir(objects):
    """emptyDir only for caches: no mount of one holds where a pod would keep jobs or tables."""
    for (kind, name), manifest in objects.items():
        if kind not in ("Deployment", "StatefulSet"):
            continue
        pod = manifest["spec"]["template"]["spec"]
        empty = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for container in pod["containers"]:
            env = _environment(objects, container)
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in empty:
                    continue
                under = PurePosixPath(mount["mountPath"])
                for setting in STATE_PATHS:
                    path = _state_path(env, setting)
                    assert under != path and under not in path.parents, (name, setting, under)


def test_the_autoscaling_overlay_scales_model_services_on_the_queue_depth_they_export(objects):
    """deploy/k8s/autoscaling: every HPA targets a model-service Deployment of the base and
    reads the gauge the scheduler exports, by labels it has and values they take."""
    from clip_service.metrics import QUEUE_DEPTH
    from clip_service.scheduling import Priority

    (name,) = (family.name for family in QUEUE_DEPTH.describe())
    overlay = K8S / "autoscaling"
    applied = _resources(overlay)
    base = {
        (doc["kind"], doc["metadata"]["name"])
        for doc in applied
        if doc["kind"] != "HorizontalPodAutoscaler"
    }
    assert base == set(objects)  # the whole deployment, and the HPAs
    hpas = [doc for doc in applied if doc["kind"] == "HorizontalPodAutoscaler"]
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
    found = {}
    for folder in (K8S, K8S / "autoscaling"):
        for doc in _resources(folder):
            found[doc["kind"], doc["metadata"]["name"]] = doc
    return list(found.values())


def test_the_kustomizations_refuse_a_cycle():
    """What kustomize refuses ('contains visited root') is refused here too: an overlay
    built on the folder it lies in (deploy/k8s/autoscaling on deploy/k8s)."""
    with pytest.raises(AssertionError, match="autoscaling"):
        _resources(K8S / "autoscaling", (K8S / "autoscaling",))
    with pytest.raises(AssertionError):
        _resources(K8S, (K8S / "autoscaling",))


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
