"""The docs cover what the code offers: routes, WebSocket messages, settings, CLI flags."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

from fastapi.routing import APIWebSocketRoute

from server import Settings, create_app
from server.cli import build_parser
from server.routes import live_ws, train_ws

ROOT = Path(__file__).resolve().parent.parent
HTTP_API = (ROOT / "docs" / "http_api.md").read_text()
README = (ROOT / "README.md").read_text()


def test_every_route_is_documented(tmp_path: Path) -> None:
    app = create_app(Settings(db=tmp_path / "d.db", auth=False))
    documented = set(re.findall(r"^#{2,3} `(GET|POST|DELETE|PATCH|PUT) ([^`]+)`", HTTP_API, re.M))
    served = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert len(served) >= 10  # the check sees the routes
    assert not served - documented, f"undocumented in docs/http_api.md: {served - documented}"
    for router in (live_ws.router, train_ws.router):
        for route in router.routes:
            assert isinstance(route, APIWebSocketRoute)
            assert f"WebSocket `{route.path}`" in HTTP_API, route.path


def test_every_websocket_message_type_is_documented() -> None:
    sources = "".join(
        p.read_text()
        for p in [*(ROOT / "server").rglob("*.py"), *(ROOT / "client_callback").rglob("*.py")]
    )
    sent = set(re.findall(r'"type": "([a-z_]+)"', sources))
    assert {"hello", "welcome", "records", "ack", "command", "error", "metrics", "run"} <= sent
    missing = sorted(t for t in sent if f'"type": "{t}"' not in HTTP_API)
    assert not missing, f"message types missing from docs/http_api.md: {missing}"


def test_every_setting_and_cli_flag_is_documented() -> None:
    for f in dataclasses.fields(Settings):
        assert f"`{f.name}`" in README, f"setting {f.name} is not in the README"
    for action in build_parser()._subparsers._group_actions[0].choices["serve"]._actions:  # type: ignore[union-attr]
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert f"`{flag}" in README, f"flag {flag} is not in the README"
    for var in ("FITDECK_HOST", "FITDECK_PORT", "FITDECK_DB", "FITDECK_TOKEN", "FITDECK_URL"):
        assert var in README


def test_server_imports_no_tensorflow() -> None:
    code = (
        "import sys, server, server.app, server.cli\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_client_callback_without_keras_says_what_to_install() -> None:
    # -S: no site-packages, so no Keras (the package itself is found from the checkout)
    out = subprocess.run(
        [sys.executable, "-S", "-c", "import client_callback"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 1
    assert "ImportError: client_callback needs Keras 3" in out.stderr
    assert "pip install 'fitdeck[tf]'" in out.stderr


def test_every_test_the_readme_cites_exists() -> None:
    cited = re.findall(r"`(test_\w+\.py)::(test_\w+)`", README)
    assert len(cited) >= 10
    for filename, name in cited:
        source = (ROOT / "tests" / filename).read_text()
        assert f"def {name}(" in source, f"README cites {filename}::{name}, which does not exist"
