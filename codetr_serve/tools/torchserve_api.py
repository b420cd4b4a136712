"""A small client for TorchServe's HTTP APIs (inference, management), with token auth.

TorchServe 0.12 writes its keys to key_file.json in the directory it was started from:
{"management": {"key": ...}, "inference": {"key": ...}, "API": {"key": ...}}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import requests


def read_keys(key_file: Path | None) -> dict[str, str]:
    """{"management": key, "inference": key}; empty when auth is off (no key file)."""
    if key_file is None or not Path(key_file).is_file():
        return {}
    data = json.loads(Path(key_file).read_text())
    return {api: data[api]["key"] for api in ("management", "inference") if api in data}


@dataclass
class TorchServeClient:
    inference_url: str = "http://127.0.0.1:8080"
    management_url: str = "http://127.0.0.1:8081"
    key_file: Path | None = None
    timeout_s: float = 300.0

    def _headers(self, api: str) -> dict[str, str]:
        key = read_keys(self.key_file).get(api)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def predict(self, model: str, image: bytes, **params) -> requests.Response:
        """POST raw image bytes to /predictions/<model>; options travel as X- headers (see codec)."""
        headers = {**self._headers("inference"), "Content-Type": "application/octet-stream"}
        headers.update({f"X-{name.replace('_', '-').title()}": str(value) for name, value in params.items()})
        return requests.post(f"{self.inference_url}/predictions/{model}", data=image, headers=headers,
                             timeout=self.timeout_s)

    def manage(self, method: str, path: str, **params) -> requests.Response:
        response = requests.request(method, f"{self.management_url}/{path.lstrip('/')}", params=params,
                                    headers=self._headers("management"), timeout=self.timeout_s)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {response.status_code}: {response.text.strip()}")
        return response

    def versions(self, model: str) -> list[str]:
        """Every registered version of `model`."""
        response = self.manage("GET", f"models/{model}/all")
        return [entry["modelVersion"] for entry in response.json()]
