"""A model update under a continuous request loop loses no request."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from codetr_serve.tools.rollout import manifest_version, roll_out
from tests.conftest import TINY_CONFIG, encode_image
from tests.e2e.conftest import run_archive

pytestmark = pytest.mark.e2e


def test_rollout_under_load_loses_no_request(server):
    built = run_archive("--config", str(TINY_CONFIG), "--out", str(server.store), "--name", "co_detr_v2",
                        "--seed", "7")
    assert built.returncode == 0, built.stderr
    new_version = manifest_version("co_detr_v2.mar", server.store)
    old_versions = server.client.versions("co_detr")
    assert new_version not in old_versions

    image, statuses, versions, names = encode_image(160, 120, seed=21), [], [], set()
    stop = threading.Event()

    def loop() -> None:
        deadline = time.monotonic() + 240
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                response = requests.post(server.predict_url(), data=image, headers=server.auth(), timeout=60)
            except requests.RequestException as error:  # a lost request must fail the test, not a thread
                statuses.append(repr(error))
                continue
            statuses.append(response.status_code)
            if response.status_code == 200:
                model = response.json()["model"]
                names.add(model["name"])
                versions.append(model["version"])

    workers = [threading.Thread(target=loop) for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(2)
    removed = roll_out(server.client, "co_detr", "co_detr_v2.mar", new_version, workers=1)
    time.sleep(3)
    stop.set()
    for worker in workers:
        worker.join()

    assert removed == old_versions
    assert server.client.versions("co_detr") == [new_version]
    assert statuses and set(statuses) == {200}, f"failed requests during rollout: {statuses}"
    assert versions[-1] == new_version and versions[0] in old_versions
    assert names == {"co_detr"}  # the registered name, not the archive's co_detr_v2
