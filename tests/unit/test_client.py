"""The CLI client's own failures are one clear line, not a traceback (its e2e test is in tests/e2e)."""

from __future__ import annotations

import pytest

from codetr_serve.tools.client import main


def test_an_unreadable_image_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path / "missing.jpg")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "missing.jpg" in err and "Traceback" not in err
