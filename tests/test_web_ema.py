"""The dashboard's EMA smoothing (web/js/ema.js), unit-tested in Node (`node --test`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ema_module_in_node(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is needed for the dashboard's JavaScript unit tests")
        pytest.skip("node is not installed")
    module = tmp_path / "ema.mjs"  # .mjs: Node reads it as an ES module
    shutil.copy(ROOT / "web" / "js" / "ema.js", module)
    result = subprocess.run(
        [node, "--test", str(ROOT / "tests" / "js" / "ema.test.mjs")],
        capture_output=True,
        text=True,
        env={**os.environ, "EMA_MODULE": module.as_uri()},
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout
