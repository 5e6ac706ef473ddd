"""docker-compose.yml agrees with the settings the code reads (nobody runs Docker here)."""

from __future__ import annotations

from pathlib import Path

import yaml

from recstream.contracts.settings import ENV_PREFIX, EXPERIMENT_VARIABLE, VARIABLES, load_settings

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_every_service_of_the_system():
    services = compose()["services"]
    assert {"kafka", "redis", "worker", "reader", "prometheus", "grafana"} <= services.keys()
    assert services["kafka"]["image"] == "apache/kafka:3.9.1"
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_recstream_environment_is_valid_settings(monkeypatch):
    for name, service in compose()["services"].items():
        env = {k: str(v) for k, v in (service.get("environment") or {}).items() if k.startswith(ENV_PREFIX)}
        unknown = {k for k in env if k[len(ENV_PREFIX) :].lower() not in {*VARIABLES, EXPERIMENT_VARIABLE}}
        assert not unknown, f"{name}: {unknown} are not settings"
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        load_settings()  # raises, naming the variable, if any value is invalid
        for key in env:
            monkeypatch.delenv(key)


def test_ports_and_scrape_targets_match_the_settings():
    services = compose()["services"]
    worker_env, reader_env = services["worker"]["environment"], services["reader"]["environment"]
    worker_port, reader_port = worker_env["RECSTREAM_WORKER_METRICS_PORT"], reader_env["RECSTREAM_READER_PORT"]
    assert f"{worker_port}:{worker_port}" in services["worker"]["ports"]
    assert f"{reader_port}:{reader_port}" in services["reader"]["ports"]
    assert worker_env["RECSTREAM_KAFKA_BOOTSTRAP"] == "kafka:9092" and "9092:9092" in services["kafka"]["ports"]
    assert worker_env["RECSTREAM_REDIS_URL"].startswith("redis://redis:6379")
    prometheus = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for cfg in job["static_configs"] for t in cfg["targets"]}
    assert {f"worker:{worker_port}", f"reader:{reader_port}"} <= targets
