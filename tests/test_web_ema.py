"""The dashboard's pure modules, unit-tested in Node (`node --test`): the EMA smoothing
(web/js/ema.js); the LR guards, settings and numbering (lr.js, settings.js, format.js)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def find_node() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is needed for the dashboard's JavaScript unit tests")
        pytest.skip("node is not installed")
    return node


def test_ema_module_in_node(tmp_path: Path) -> None:
    node = find_node()
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


def test_lr_guards_settings_and_numbering_in_node(tmp_path: Path) -> None:
    node = find_node()
    web_js = tmp_path / "js"  # a copy Node reads as ES modules (package.json "type")
    shutil.copytree(ROOT / "web" / "js", web_js)
    (web_js / "package.json").write_text('{"type": "module"}')
    result = subprocess.run(
        [node, "--test", str(ROOT / "tests" / "js" / "lr.test.mjs")],
        capture_output=True,
        text=True,
        env={**os.environ, "WEB_JS": web_js.as_uri()},
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout and "# pass 8" in result.stdout
