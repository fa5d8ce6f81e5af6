"""The docs cover what the code offers: routes, WebSocket messages, settings, CLI flags."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIWebSocketRoute

from server import Settings, create_app, protocol
from server.cli import build_parser
from server.routes import live_ws, train_ws
from tests.conftest import local_client

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
    assert {"hello", "welcome", "records", "ack", "command", "error", "metrics", "run"} <= set(
        protocol.MESSAGE_TYPES
    )
    missing = [t for t in protocol.MESSAGE_TYPES if f'"type": "{t}"' not in HTTP_API]
    assert not missing, f"message types missing from docs/http_api.md: {missing}"


def test_every_message_builder_makes_a_listed_type() -> None:
    """`Msg` has one builder per type, and nothing builds a type the list lacks."""
    built = {
        name: getattr(protocol.Msg, name) for name in dir(protocol.Msg) if not name.startswith("_")
    }
    samples = {
        "hello": ("0" * 32,),
        "records": ([],),
        "welcome": ("0" * 32, 0),
        "ack": (1,),
        "command": ({"id": 1, "kind": "stop", "lr": None},),
        "commit": (1, 12),
        "error": ("x",),
        "storage_error": ("x",),
        "storage": (None,),
        "subscribe": ([],),
        "live_hello": (0.0,),
        "subscribed": ([],),
        "run": ({},),
        "run_deleted": ("0" * 32,),
        "metrics": ("0" * 32, "batch", []),
        "event": ("0" * 32, {}),
    }
    assert set(built) == set(samples), "a new Msg builder needs a sample here"
    types = {built[name](*args)["type"] for name, args in samples.items()}
    assert types == set(protocol.MESSAGE_TYPES)


def test_every_record_type_is_documented() -> None:
    missing = [t for t in protocol.RECORD_TYPES if f"`{t}`" not in HTTP_API]
    assert not missing, f"record types missing from docs/http_api.md: {missing}"


def test_every_environment_variable_is_documented() -> None:
    names = [v for k, v in vars(protocol.Env).items() if k.isupper()]
    assert len(names) >= 8
    missing = [v for v in names if v not in README]
    assert not missing, f"environment variables missing from the README: {missing}"


def test_every_setting_and_cli_flag_is_documented() -> None:
    for f in dataclasses.fields(Settings):
        assert f"`{f.name}`" in README, f"setting {f.name} is not in the README"
    for action in build_parser()._subparsers._group_actions[0].choices["serve"]._actions:  # type: ignore[union-attr]
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert f"`{flag}" in README, f"flag {flag} is not in the README"


@pytest.mark.slow
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


def documented_open_routes() -> set[str]:
    """The routes docs/http_api.md lists as open without the token (its open-routes table)."""
    table = HTTP_API.split("<!-- open-routes -->", 1)[1].split("<!-- /open-routes -->", 1)[0]
    return set(re.findall(r"^\| `((?:GET|POST) [^`]+)` \|", table, re.M))


def test_the_routes_open_without_the_token_are_the_documented_ones(tmp_path: Path) -> None:
    """Every HTTP route is asked without the token: those that answer are the documented set."""
    from starlette.routing import Mount, Route

    app = create_app(Settings(db=tmp_path / "d.db", token="the-token-" + "x" * 22))
    run_id = "0" * 32
    asked: list[tuple[str, str]] = []

    def walk(routes: Any) -> None:
        for route in routes:
            if isinstance(route, Route):  # APIRoute too
                path = route.path.replace("{run_id}", run_id)
                asked.extend((m, path) for m in sorted(route.methods or ()) if m != "HEAD")
            elif isinstance(route, Mount):
                asked.append(("GET", f"{route.path}/js/main.js"))  # a file the mount serves
            elif hasattr(route, "original_router"):  # an included router (FastAPI ≥ 0.120)
                walk(route.original_router.routes)

    walk(app.routes)
    assert ("POST", f"/api/runs/{run_id}/commands") in asked and len(asked) >= 14

    open_routes = set()
    with local_client(app) as anonymous:
        for method, path in asked:
            answer = anonymous.request(method, path, json={})
            if answer.status_code != 401:
                assert answer.status_code < 400, (method, path, answer.status_code)
                shown = "/static/…" if path.startswith("/static/") else path
                open_routes.add(f"{method} {shown}")
            else:
                assert answer.json()["error"]["status"] == 401
        # With the right token the closed ones let the request through.
        answer = anonymous.get(
            "/api/runs", headers={"Authorization": "Bearer the-token-" + "x" * 22}
        )
        assert answer.status_code == 200
    assert open_routes == documented_open_routes()
    for route in open_routes:  # the README's Security section names them too
        assert f"`{route.split()[1].rstrip('…')}" in README, route


def json_after(heading: str) -> Any:
    """The first JSON example under `heading` in docs/http_api.md."""
    section = HTTP_API.split(f"\n{heading}\n", 1)[1]
    return json.loads(section.split("```json\n", 1)[1].split("\n```", 1)[0])


@pytest.mark.slow
def test_the_run_example_has_the_fields_a_real_run_has(server: Any) -> None:
    """The Run, Command and Event examples have exactly the keys a real `fit` makes."""
    pytest.importorskip("keras")
    from client_callback import LiveMonitor
    from tests.conftest import callback, make_data, make_model

    x, y = make_data(64)
    mon = LiveMonitor(url=server.url, token=server.token, run_name="docs", params={"a": 1})
    post = callback(
        on_train_batch_end=lambda self, batch, logs=None: (
            batch == 0
            and not server.commands(mon.run_id)
            and server.client.post(
                f"/api/runs/{mon.run_id}/commands", json={"kind": "set_lr", "lr": 0.005}
            )
        )
    )
    make_model().fit(x, y, epochs=2, batch_size=16, callbacks=[mon, post], verbose=0)
    real = server.run(mon.run_id)
    doc = json_after("### Run")
    assert set(doc) == set(real)
    assert set(doc["meta"]) == set(real["meta"])
    assert set(doc["meta"]["optimizer"]) == set(real["meta"]["optimizer"])
    assert set(doc["meta"]["layers"][0]) == set(real["meta"]["layers"][0])
    assert real["meta"][protocol.SETTINGS_META] == doc["meta"][protocol.SETTINGS_META]
    [command] = server.commands(mon.run_id)
    assert set(json_after("### Command")) == set(command)
    events = server.client.get(f"/api/runs/{mon.run_id}/events").json()["events"]
    assert events and all(set(e) == set(json_after("### Event")) for e in events)
