"""Every shipped TorchServe configuration keeps the management API (HTTP and gRPC) on loopback.

Management registers and unregisters models and scales workers: anyone who reaches it controls the
server. Inference and metrics may listen on all interfaces in containers (a NetworkPolicy guards them);
management never. Read: every config.properties under config/, docker/ and k8s/, config.properties text
inlined in YAML (ConfigMaps), and TS_*MANAGEMENT_ADDRESS environment variables in YAML and Dockerfiles.
An unset address is fine: TorchServe 0.12 binds management to 127.0.0.1 by default.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [REPO / name for name in ("config", "docker", "k8s")]
KEYS = ("management_address", "grpc_management_address")
ENV_KEYS = ("TS_MANAGEMENT_ADDRESS", "TS_GRPC_MANAGEMENT_ADDRESS")
_PROPERTY = re.compile(rf"^\s*({'|'.join(KEYS)})\s*[=:]\s*(\S+)", re.M)
_DOCKER_ENV = re.compile(rf"\b({'|'.join(ENV_KEYS)})[= ]\s*\"?([^\s\"]+)")


def is_loopback(address: str) -> bool:
    """`http://127.0.0.1:8081`, `https://localhost:8443`, `[::1]`, a bare host, or a unix socket."""
    if address.startswith("unix:"):
        return True
    host = urlsplit(address if "//" in address else f"//{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def yaml_strings(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from yaml_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from yaml_strings(value)
    elif isinstance(node, str):
        yield node


def yaml_env(node: object) -> Iterator[tuple[str, str]]:
    """(name, value) of every `- name: X  value: Y` entry (container env) anywhere in the document."""
    if isinstance(node, dict):
        if node.get("name") in ENV_KEYS and "value" in node:
            yield node["name"], str(node["value"])
        for value in node.values():
            yield from yaml_env(value)
    elif isinstance(node, list):
        for value in node:
            yield from yaml_env(value)


def addresses() -> list[tuple[str, str, str]]:
    """(file, setting, value) for every management address set anywhere we ship."""
    found = []
    for root in SHIPPED:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            where = str(path.relative_to(REPO))
            if path.suffix == ".properties":
                found += [(where, k, v) for k, v in _PROPERTY.findall(path.read_text())]
            elif path.suffix in (".yaml", ".yml"):
                for document in yaml.safe_load_all(path.read_text()):
                    for text in yaml_strings(document):
                        found += [(where, k, v) for k, v in _PROPERTY.findall(text)]
                    found += [(where, k, v) for k, v in yaml_env(document)]
            elif path.name.startswith("Dockerfile") or path.suffix == ".sh":
                found += [(where, k, v) for k, v in _DOCKER_ENV.findall(path.read_text())]
    return found


def test_the_shipped_configurations_are_found():
    properties = [p for root in SHIPPED for p in root.rglob("*.properties")]
    assert REPO / "config" / "config.properties" in properties
    assert {where for where, _, _ in addresses()} >= {"config/config.properties"}


@pytest.mark.parametrize(("where", "setting", "value"), addresses(),
                         ids=lambda v: v if isinstance(v, str) and "/" in v else None)
def test_management_listens_on_loopback_only(where: str, setting: str, value: str):
    assert is_loopback(value), f"{where}: {setting}={value} exposes the management API beyond loopback"


@pytest.mark.parametrize(("address", "loopback"), [
    ("http://127.0.0.1:8081", True), ("https://localhost:8444", True), ("http://[::1]:8081", True),
    ("127.0.0.1", True), ("unix:/tmp/management.sock", True), ("http://0.0.0.0:8081", False),
    ("http://10.0.0.5:8081", False), ("http://[::]:8081", False), ("http://example.com:8081", False),
])
def test_the_loopback_check_itself(address: str, loopback: bool):
    assert is_loopback(address) is loopback


def test_properties_inlined_in_yaml_are_read():
    text = "data:\n  config.properties: |\n    inference_address=http://0.0.0.0:8080\n" \
           "    management_address=http://0.0.0.0:8081\n"
    found = [m for s in yaml_strings(yaml.safe_load(text)) for m in _PROPERTY.findall(s)]
    assert found == [("management_address", "http://0.0.0.0:8081")]
