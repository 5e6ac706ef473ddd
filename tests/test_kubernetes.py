"""deploy/k8s agrees with the settings the code reads, the reader's routes and the image (no cluster runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from fastapi.routing import APIRoute
from recstream.serving.app import create_app

from recstream.contracts.settings import ALL_VARIABLES, ENV_PREFIX, Settings
from tests.test_compose import LOOPBACK, listens, settings_of

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"


def resources() -> list[Path]:
    return sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


def manifests() -> list[dict]:
    return [doc for path in resources() for doc in yaml.safe_load_all(path.read_text()) if doc]


def named(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in manifests() if doc["kind"] == kind}


def pod_specs() -> dict[str, dict]:
    """Every workload's pod spec by workload name."""
    specs = {}
    for doc in manifests():
        spec = doc.get("spec", {})
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            specs[doc["metadata"]["name"]] = spec["template"]["spec"]
    return specs


def environment(container: dict) -> dict[str, str]:
    """The variables a container starts with: its ConfigMaps and Secrets (envFrom), then its own env."""
    config_maps, secrets = named("ConfigMap"), named("Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]]["data"])
        else:
            env.update(secrets[source["secretRef"]["name"]]["stringData"])
    env.update({e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e})
    return env


def containers() -> list[tuple[str, dict]]:
    return [(name, c) for name, spec in pod_specs().items() for c in spec["containers"]]


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [path.name for path in resources()]
    assert {image["name"] for image in kustomization["images"]} == {c["image"] for _, c in containers()}


def test_every_recstream_variable_is_a_setting_with_a_valid_value():
    known = {f"{ENV_PREFIX}{name.upper()}" for name in ALL_VARIABLES}
    for doc in [*named("ConfigMap").values(), *named("Secret").values()]:
        values = doc.get("data") or doc.get("stringData") or {}
        assert set(values) <= known, f"{doc['metadata']['name']}: {set(values) - known} are not settings"
    for name, container in containers():
        env = environment(container)
        assert set(env) <= known, f"{name}: {set(env) - known} are not settings"
        settings_of(env)  # raises, naming the variable, for an invalid value


def test_secrets_hold_the_redis_url_and_the_api_key_and_nothing_else_does():
    (secret,) = named("Secret").values()
    assert set(secret["stringData"]) == {"RECSTREAM_REDIS_URL", "RECSTREAM_API_KEY"}
    for config_map in named("ConfigMap").values():
        assert not {"RECSTREAM_REDIS_URL", "RECSTREAM_API_KEY"} & set(config_map["data"])


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_ports_and_probes_match_the_settings_and_the_routes(command: str):
    (workload, container), *others = [(n, c) for n, c in containers() if c["args"] == [command]]
    assert not others, f"one Deployment runs {command}"
    host, port = listens([command], settings_of(environment(container))) or ("", 0)
    assert host not in LOOPBACK and not host.startswith("127."), f"{workload} listens on {host}: no probe reaches it"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert list(ports.values()) == [port], f"{workload}: the container port is the setting's"
    probes = [container[key]["httpGet"] for key in ("livenessProbe", "readinessProbe") if key in container]
    assert probes and all(ports.get(probe["port"], probe["port"]) == port for probe in probes), workload
    if command == "serve":
        app = create_app(Settings())
        routes = {r.path for r in app.routes if isinstance(r, APIRoute) and "GET" in r.methods}
        assert [probe["path"] for probe in probes] == ["/healthz", "/readyz"]
        assert {probe["path"] for probe in probes} <= routes
    else:  # the worker's metrics port: /healthz turns 503 when an agent stopped or stalled, /metrics never does
        assert [probe["path"] for probe in probes] == ["/healthz"]
    annotations = next(d for d in manifests() if d["metadata"]["name"] == workload)["spec"]["template"]["metadata"]
    assert annotations["annotations"]["prometheus.io/port"] == str(port)


def test_the_reader_service_reaches_the_readers_port():
    (service,) = named("Service").values()
    (reader,) = [c for _, c in containers() if c["args"] == ["serve"]]
    port = settings_of(environment(reader)).reader.port
    assert service["spec"]["selector"] == named("Deployment")["recstream-reader"]["spec"]["selector"]["matchLabels"]
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(port, "http")]


def test_workers_fit_the_partitions_and_share_the_model_volume():
    worker = named("Deployment")["recstream-worker"]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    settings = settings_of(environment(container))
    assert 1 <= worker["spec"]["replicas"] <= settings.kafka.events_partitions, "a worker beyond them idles"
    for name, spec in pod_specs().items():
        for c in spec["containers"]:
            if c["args"][0] in ("worker", "train"):
                mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                volumes = {v["name"]: v for v in spec["volumes"]}
                models = volumes[mounts[str(settings.model.dir)]]
                assert models["persistentVolumeClaim"]["claimName"] == "recstream-models", name
    (claim,) = named("PersistentVolumeClaim").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "workers on several nodes and train mount it"


def test_every_pod_runs_as_the_images_user_on_a_read_only_root():
    uid = int(re.findall(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), flags=re.M)[-1])
    for name, spec in pod_specs().items():
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == uid, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"], name
            assert context["capabilities"]["drop"] == ["ALL"], name
    worker = pod_specs()["recstream-worker"]["containers"][0]
    assert "/app" in {m["mountPath"] for m in worker["volumeMounts"]}, "faust writes its data folder there"
