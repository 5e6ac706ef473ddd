"""docker-compose.yml agrees with the settings the code reads and publishes nothing beyond the host's loopback.

Nobody runs Docker here; ``./dev test`` runs ``docker compose config`` where a Docker engine answers.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from recstream.contracts.settings import ENV_PREFIX, Settings, SettingsError

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class Published(NamedTuple):
    host_ip: str  # "" is every interface of the host
    host_port: int
    container_port: int


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def settings_of(environment: Mapping[str, object]) -> Settings:
    """The settings a process started with these variables reads (the defaults for the others); a value compose takes
    from the host (``${NAME:-default}``) as its default, which is what runs when the host does not set it."""
    variables = {
        k[len(ENV_PREFIX) :].lower(): re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v))
        for k, v in environment.items()
        if k.startswith(ENV_PREFIX)
    }
    return Settings().replace(**variables)  # raises, naming the variable, for an unknown or invalid one


def listens(command: list[str], settings: Settings) -> tuple[str, int] | None:
    """Where ``recstream <command>`` listens for Prometheus (the reader serves /metrics on its own port)."""
    if command[:1] == ["worker"]:
        return settings.worker.metrics_host, settings.worker.metrics_port
    if command[:1] == ["serve"]:
        return settings.reader.host, settings.reader.port
    return None


def published(service: dict) -> list[Published]:
    """Its ``ports``, short ("[ip:]host:container") or long syntax."""
    ports = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            target = int(entry["target"])
            ports.append(Published(entry.get("host_ip", ""), int(entry.get("published", target)), target))
            continue
        parts = str(entry).split("/")[0].rsplit(":", 2)
        host_ip = parts[0].strip("[]") if len(parts) == 3 else ""
        ports.append(Published(host_ip, int(parts[-2] if len(parts) > 1 else parts[-1]), int(parts[-1])))
    return ports


def test_compose_has_every_service_of_the_system():
    services = compose()["services"]
    assert {"kafka", "redis", "worker", "reader", "prometheus", "grafana"} <= services.keys()
    assert services["kafka"]["image"] == "apache/kafka:3.9.1"
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_recstream_environment_is_valid_settings():
    for name, service in compose()["services"].items():
        try:
            settings_of(service.get("environment") or {})
        except SettingsError as exc:
            pytest.fail(f"{name}: {exc}")


def test_every_scrape_target_listens_where_prometheus_reaches_it():
    """Prometheus scrapes from its own container: a target bound to loopback is down (RecstreamTargetDown)."""
    services = compose()["services"]
    prometheus = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for cfg in job["static_configs"] for t in cfg["targets"]]
    assert {target.split(":")[0] for target in targets} == {"worker", "reader"}
    for target in targets:
        name, port = target.rsplit(":", 1)
        service = services[name]
        host, bound = listens(service["command"], settings_of(service["environment"])) or ("", 0)
        assert host not in LOOPBACK and not host.startswith("127."), f"{name} listens on {host}: {target} is down"
        assert bound == int(port), f"{name} listens on port {bound}, Prometheus scrapes {target}"
        assert Published("127.0.0.1", bound, bound) in published(service), f"{name}: not on the host's {bound}"


def test_nothing_is_published_beyond_the_hosts_loopback():
    """Kafka, Redis, the metrics, Prometheus and Grafana's anonymous viewer have no authentication."""
    for name, service in compose()["services"].items():
        for port in published(service):
            assert port.host_ip in LOOPBACK, f"{name} publishes {port.host_port} on every interface of the host"


def test_containers_and_the_hosts_clients_reach_kafka_and_redis():
    """Containers by service name; the host's clients (``recstream produce`` from a checkout) with the default
    settings, through the loopback ports, to which Kafka advertises its own published address."""
    services = compose()["services"]
    inside = settings_of(services["worker"]["environment"])
    assert inside.kafka.bootstrap == "kafka:9092" and inside.redis.url.startswith("redis://redis:6379/")
    host = Settings()
    kafka_env = services["kafka"]["environment"]
    listeners = dict(entry.split("://") for entry in kafka_env["KAFKA_LISTENERS"].split(","))
    advertised = dict(entry.split("://") for entry in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised["PLAINTEXT"] == inside.kafka.bootstrap
    (kafka_port,) = published(services["kafka"])
    listener = next((name for name, address in advertised.items() if address == host.kafka.bootstrap), None)
    assert listener, f"no Kafka listener advertises {host.kafka.bootstrap} to the host's clients"
    assert listeners[listener] == f":{kafka_port.container_port}"
    assert f"{kafka_port.host_ip}:{kafka_port.host_port}" == host.kafka.bootstrap
    (redis_port,) = published(services["redis"])
    assert (redis_port.host_ip, redis_port.host_port) == ("127.0.0.1", host.redis.port) == ("127.0.0.1", 6379)


def dev_compose(tmp_path: Path, docker: str | None) -> subprocess.CompletedProcess[str]:
    """``./dev compose`` with ``docker`` (a shell script's body, or no docker at all) first on the PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if docker is not None:
        (bin_dir / "docker").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls"}\n{docker}\n')
        (bin_dir / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    return subprocess.run([str(ROOT / "dev"), "compose"], env=env, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("docker", [None, "exit 1"], ids=["no docker", "no compose plugin"])
def test_dev_says_compose_config_was_skipped_without_docker_compose(tmp_path: Path, docker: str | None):
    done = dev_compose(tmp_path, docker)
    assert (done.returncode, done.stdout) == (0, "docker compose config: SKIPPED (no docker compose plugin)\n")
    assert "compose config" not in ((tmp_path / "calls").read_text() if docker else "")


@pytest.mark.parametrize("compose_rc", [0, 1])
def test_dev_runs_compose_config_where_the_plugin_is_even_without_an_engine(tmp_path: Path, compose_rc: int):
    """``docker compose config`` reads the file only: no engine needed (``docker info`` would fail here)."""
    done = dev_compose(tmp_path, f'[ "$1 $2" = "compose version" ] && exit 0; exit {compose_rc}')
    assert (tmp_path / "calls").read_text().splitlines() == ["compose version", "compose config -q"]
    assert (done.returncode == 0) == (compose_rc == 0)
    assert ("docker compose config: OK" in done.stdout) == (compose_rc == 0)
