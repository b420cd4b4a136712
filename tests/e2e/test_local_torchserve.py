"""The private TorchServe helper behind e2e tests, benchmarks and soaks says why a server did not come up."""

from __future__ import annotations

import pytest

from codetr_serve.tools.local_torchserve import LocalTorchServe


def test_a_server_that_cannot_start_reports_its_exit_status_and_where_its_logs_are(tmp_path):
    server = LocalTorchServe(tmp_path / "ts", tmp_path / "no-such-store", {"x": "x.mar"})
    server.start()
    try:
        with pytest.raises(RuntimeError, match=r"exited early \(exit status [1-9]\d*\)") as caught:
            server.wait_ready(120)
        assert f"logs under {tmp_path / 'ts' / 'logs'}" in str(caught.value)
        assert "ts_log.log (last 25 lines)" in str(caught.value)
    finally:
        server.stop()
