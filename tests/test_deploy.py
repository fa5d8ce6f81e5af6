"""The Dockerfile and docker-compose.yml agree with the real CLI and settings.

No Docker engine is needed: the files are read here and checked against
`server.cli.build_parser()` and `server.settings.Settings.from_env`, and the
slow test builds and installs the wheel the way the image does and runs the
image's command from it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from http.cookiejar import CookieJar
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from server.cli import build_parser, settings_from_args
from server.settings import Settings

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"

# Python's own runtime switches the image may set besides the FITDECK_* ones.
PYTHON_RUNTIME_ENV = {
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "PIP_DISABLE_PIP_VERSION_CHECK",
}


# --------------------------------------------------------------------------
# A Dockerfile reader: instructions with continuation lines joined.


@dataclass(frozen=True)
class Instruction:
    cmd: str
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


def read_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    out: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        cmd, _, args = full.partition(" ")
        out.append(Instruction(cmd.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def instructions(cmd: str) -> list[Instruction]:
    return [i for i in read_dockerfile() if i.cmd == cmd]


def only(cmd: str) -> Instruction:
    found = instructions(cmd)
    assert len(found) == 1, f"expected one {cmd}, found {found}"
    return found[0]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions("ENV"):
        words = shlex.split(ins.args)
        assert all("=" in w for w in words), f"use the ENV KEY=VALUE form: {ins}"
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


def healthcheck_of_dockerfile() -> list[str]:
    args = only("HEALTHCHECK").args
    options = re.match(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(.*)$", args, re.S)
    assert options, f"HEALTHCHECK must be `[--opt=v ...] CMD [exec form]`: {args}"
    return ["CMD", *json.loads(options.group(2))]


# --------------------------------------------------------------------------
# A YAML reader for the block-style subset docker-compose.yml is written in:
# nested mappings, sequences of scalars, plain / 'single' / "double" quoted
# scalars and comments. Anything else (flow style, anchors, tags, multi-line
# scalars) is refused, so the file cannot drift into something read wrongly.


_KEY = re.compile(r"^([A-Za-z0-9_.\-]+):(?:\s+(.*))?$")


def _scalar(text: str) -> str | int | bool | None:
    text = text.strip()
    if text.startswith('"'):
        m = re.match(r'^("(?:[^"\\]|\\.)*")\s*(?:#.*)?$', text)
        assert m, f"bad double-quoted scalar: {text}"
        value = json.loads(m.group(1))
        assert isinstance(value, str)
        return value
    if text.startswith("'"):
        m = re.match(r"^'((?:[^']|'')*)'\s*(?:#.*)?$", text)
        assert m, f"bad single-quoted scalar: {text}"
        return m.group(1).replace("''", "'")
    text = re.split(r"\s#", text, maxsplit=1)[0].strip()
    assert not text or text[0] not in "{[&*!|>%@`", f"unsupported YAML: {text}"
    if re.fullmatch(r"[-+]?[0-9]+", text):
        return int(text)
    if re.fullmatch(r"[-+]?([0-9]*\.[0-9]+|[0-9]+\.)|yes|no|on|off|y|n", text, re.I):
        raise AssertionError(f"quote this scalar, YAML readers disagree on it: {text}")
    return {"true": True, "false": False, "null": None, "~": None, "": None}.get(text.lower(), text)


def read_yaml(path: Path) -> Any:
    lines: list[tuple[int, str]] = []
    for raw in path.read_text().splitlines():
        assert "\t" not in raw, "tabs in YAML"
        stripped = raw.strip()
        if stripped and not stripped.startswith("#"):
            lines.append((len(raw) - len(raw.lstrip(" ")), stripped))

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1] == "-" or lines[i][1].startswith("- "):
            items: list[Any] = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
                item = lines[i][1][1:].strip()
                assert item, "nested blocks inside a sequence are not supported"
                assert not _KEY.match(item), f"mappings inside a sequence: {item}"
                items.append(_scalar(item))
                i += 1
            return items, i
        mapping: dict[str, Any] = {}
        while i < len(lines) and lines[i][0] == indent:
            m = _KEY.match(lines[i][1])
            assert m, f"not a `key: value` line: {lines[i][1]}"
            key, rest = m.group(1), m.group(2)
            assert key not in mapping, f"duplicate key {key}"
            i += 1
            if rest is not None and _scalar(rest) is not None:
                mapping[key] = _scalar(rest)
            elif i < len(lines) and lines[i][0] > indent:
                mapping[key], i = block(i, lines[i][0])
            else:
                mapping[key] = None
        return mapping, i

    value, end = block(0, lines[0][0])
    assert end == len(lines), f"unexpected indentation at: {lines[end][1]}"
    return value


def compose_service() -> dict[str, Any]:
    services = read_yaml(COMPOSE)["services"]
    assert list(services) == ["fitdeck"]
    service: dict[str, Any] = services["fitdeck"]
    return service


def compose_env(default_env: dict[str, str] | None = None) -> dict[str, str]:
    """The service's environment after compose's `${VAR:-default}` interpolation."""
    outer = {} if default_env is None else default_env
    env = compose_service()["environment"]
    assert isinstance(env, dict), "write environment as a mapping"

    def interpolate(value: str) -> str:
        def one(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2) or ""
            return outer.get(name) or default

        return re.sub(r"\$\{([A-Z_][A-Z0-9_]*):-([^}]*)\}", one, value)

    return {k: interpolate(v or "") for k, v in env.items()}


# --------------------------------------------------------------------------
# What Settings.from_env reads, found by probing it rather than assumed.


ENV_PROBES: dict[str, tuple[str, str, object]] = {
    # variable: (probe value, Settings field, expected field value)
    "FITDECK_HOST": ("192.0.2.7", "host", "192.0.2.7"),
    "FITDECK_PORT": ("8123", "port", 8123),
    "FITDECK_DB": ("/probe/x.db", "db", Path("/probe/x.db")),
    "FITDECK_TOKEN": ("probe-token", "token", "probe-token"),
}


def test_settings_from_env_reads_the_documented_variables() -> None:
    base = Settings.from_env({})
    for name, (probe, field, expected) in ENV_PROBES.items():
        got = Settings.from_env({name: probe})
        assert getattr(got, field) == expected, name
        assert getattr(base, field) != expected, name
    # An unknown FITDECK_ variable changes nothing.
    assert Settings.from_env({"FITDECK_NOPE": "1"}) == base


def container_settings(extra: dict[str, str] | None = None) -> Settings:
    """Settings the container's CMD ends up with, through the real parser."""
    cmd = only("CMD").exec_form()
    assert cmd[0] == "fitdeck"
    args = build_parser().parse_args(cmd[1:])
    env = {**dockerfile_env(), **(extra or {})}
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return settings_from_args(args)
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_base_image_and_install() -> None:
    assert only("FROM").args == "python:3.11-slim"
    runs = " ".join(i.args for i in instructions("RUN"))
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", runs), runs
    assert "tensorflow" not in runs.lower() and ".[" not in runs, "server only: no extras"


def test_dockerfile_copies_everything_the_wheel_is_built_from() -> None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= set(wheel["packages"]) | set(wheel.get("force-include", {}))
    copied: set[str] = set()
    for ins in instructions("COPY"):
        *sources, _dest = shlex.split(ins.args)
        assert not any(s.startswith("--") for s in sources), ins
        copied |= {s.rstrip("/") for s in sources}
    assert needed <= copied, f"not copied into the image: {needed - copied}"
    ignored = [p for p in sorted(needed) if dockerignored(p)]
    assert not ignored, f".dockerignore drops files the build needs: {ignored}"


def test_dockerignore_keeps_databases_and_tokens_out() -> None:
    for path in ["fitdeck.db", "runs/x.db-wal", "fitdeck.db.token", "a/fitdeck.token", ".git"]:
        assert dockerignored(path), path


def _dockerignore_patterns() -> list[re.Pattern[str]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions are not supported by this reader"
        glob = line.strip("/")
        rx = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif glob.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif glob[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif glob[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(glob[i]), i + 1
        patterns.append(re.compile(rx + r"\Z"))
    return patterns


def dockerignored(rel: str) -> bool:
    """Whether Docker leaves `rel` (or a folder holding it) out of the context."""
    parts = PurePosixPath(rel).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(p.match(prefix) for p in _dockerignore_patterns() for prefix in prefixes)


def test_dockerfile_runs_as_a_non_root_user_owning_the_volume() -> None:
    users = instructions("USER")
    assert users, "no USER: the server would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0"}
    runs = " ".join(i.args for i in instructions("RUN"))
    m = re.search(r"useradd\b[^&;]*--uid (\d+)[^&;]*\s(\w[\w-]*)\s*(?:&&|;|$)", runs)
    assert m, "the user is created with useradd --uid"
    uid, name = m.groups()
    assert user in {uid, name}
    volume = dockerfile_volume()
    # chown must come before VOLUME: later changes to a volume path are discarded.
    order = read_dockerfile()
    vol_at = next(n for n, i in enumerate(order) if i.cmd == "VOLUME")
    chowns = [
        i.args
        for i in order[:vol_at]
        if i.cmd == "RUN"
        and re.search(rf"chown \S*({name}|{uid})\S* {re.escape(volume)}\b", i.args)
    ]
    assert chowns, f"{volume} is not chowned to the user before VOLUME"
    workdirs = instructions("WORKDIR")
    assert workdirs[-1].args == volume, "relative paths (--db x.db) should land in the volume"


def dockerfile_volume() -> str:
    args = only("VOLUME").args
    volumes = json.loads(args) if args.startswith("[") else args.split()
    assert len(volumes) == 1, volumes
    return str(volumes[0])


def test_dockerfile_env_is_read_by_settings() -> None:
    env = dockerfile_env()
    fitdeck = {k for k in env if k.startswith("FITDECK_")}
    assert fitdeck <= set(ENV_PROBES), f"not read by Settings.from_env: {fitdeck - set(ENV_PROBES)}"
    assert set(env) - fitdeck <= PYTHON_RUNTIME_ENV, set(env) - fitdeck
    assert "FITDECK_TOKEN" not in env, "a token baked into the image is shared by every container"


def test_dockerfile_cmd_parses_and_gives_the_container_settings() -> None:
    cmd = only("CMD").exec_form()
    assert cmd[:2] == ["fitdeck", "serve"]
    settings = container_settings()
    assert settings.host == "0.0.0.0"  # reachable through the published port
    assert settings.port == 8000
    assert settings.db == Path("/data/fitdeck.db")
    assert settings.auth is True and settings.token is None  # generated on first start


def test_expose_matches_the_port_the_server_listens_on() -> None:
    exposed = only("EXPOSE").args.split()
    assert exposed in ([str(container_settings().port)], [f"{container_settings().port}/tcp"])


def test_volume_holds_the_database_and_its_token() -> None:
    settings = container_settings()
    assert PurePosixPath(settings.db).parent == PurePosixPath(dockerfile_volume())


def _healthcheck_url(test: list[str], env: dict[str, str]) -> str:
    """The URL a healthcheck command requests, found by running its code with
    urlopen replaced."""
    assert test[:2] in (["CMD", "python"], ["CMD", "python3"]) and test[2] == "-c", test
    seen: list[str] = []

    class Stop(Exception):
        pass

    def fake_urlopen(url: str, timeout: float | None = None) -> None:
        seen.append(url)
        raise Stop

    saved_env, saved_urlopen = dict(os.environ), urllib.request.urlopen
    try:
        os.environ.clear()
        os.environ.update(env)
        urllib.request.urlopen = fake_urlopen  # type: ignore[assignment]
        with pytest.raises(Stop):
            exec(test[3], {})
    finally:
        urllib.request.urlopen = saved_urlopen
        os.environ.clear()
        os.environ.update(saved_env)
    assert len(seen) == 1
    return seen[0]


def test_dockerfile_healthcheck_hits_health_on_the_server_port() -> None:
    env = dockerfile_env()
    port = container_settings().port
    assert _healthcheck_url(healthcheck_of_dockerfile(), env) == (
        f"http://127.0.0.1:{port}/api/health"
    )
    # It follows FITDECK_PORT when a deployment overrides it.
    assert _healthcheck_url(healthcheck_of_dockerfile(), {**env, "FITDECK_PORT": "9100"}) == (
        "http://127.0.0.1:9100/api/health"
    )
    assert "--interval=" in only("HEALTHCHECK").args


# --------------------------------------------------------------------------
# docker-compose.yml


def test_compose_builds_the_dockerfile() -> None:
    service = compose_service()
    build = service["build"]
    context = build if isinstance(build, str) else build["context"]
    assert (COMPOSE.parent / context).resolve() == ROOT.resolve()
    if isinstance(build, dict) and "dockerfile" in build:
        assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
    assert service["restart"] == "unless-stopped"


def test_compose_publishes_the_container_port_on_loopback_only() -> None:
    ports = compose_service()["ports"]
    assert len(ports) == 1
    m = re.fullmatch(r"(?P<ip>[\d.]+):(?P<host>\d+):(?P<container>\d+)(?:/tcp)?", ports[0])
    assert m, f"publish as IP:HOST:CONTAINER, never without an IP (that is 0.0.0.0): {ports[0]}"
    assert m["ip"] == "127.0.0.1"
    assert int(m["container"]) == container_settings(compose_env()).port
    assert int(m["host"]) == 8000
    assert only("EXPOSE").args.split()[0].split("/")[0] == m["container"]


def test_compose_mounts_a_named_volume_at_the_database_directory() -> None:
    compose = read_yaml(COMPOSE)
    volumes = compose_service()["volumes"]
    assert len(volumes) == 1
    name, target = volumes[0].split(":")[:2]
    assert name == "fitdeck-data" and name in compose["volumes"]
    db = container_settings(compose_env()).db
    assert PurePosixPath(db).parent == PurePosixPath(target) == PurePosixPath(dockerfile_volume())


def test_compose_environment_is_read_by_settings() -> None:
    env = compose_env()
    assert set(env) == {"FITDECK_TOKEN"}
    assert set(env) <= set(ENV_PROBES)
    # Unset or empty on the host: the server generates and keeps its own token.
    generated = container_settings(compose_env({}))
    assert generated.auth is True and generated.token is None
    chosen = container_settings(compose_env({"FITDECK_TOKEN": "s3cret"}))
    assert chosen.token == "s3cret"
    assert compose_env({"FITDECK_TOKEN": "s3cret"}) == {"FITDECK_TOKEN": "s3cret"}


def test_compose_healthcheck_is_the_images_healthcheck() -> None:
    health = compose_service()["healthcheck"]
    assert health["test"] == healthcheck_of_dockerfile()
    env = {**dockerfile_env(), **compose_env()}
    port = container_settings(compose_env()).port
    assert _healthcheck_url(health["test"], env) == f"http://127.0.0.1:{port}/api/health"
    assert "$" not in " ".join(health["test"]), "compose would interpolate `$` in the command"
    for key in ("interval", "timeout", "retries"):
        assert health.get(key), key


def test_yaml_reader_agrees_with_pyyaml() -> None:
    yaml = pytest.importorskip("yaml")
    assert read_yaml(COMPOSE) == yaml.safe_load(COMPOSE.read_text())


# --------------------------------------------------------------------------
# The image's install, done the same way outside Docker.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(
    url: str,
    headers: dict[str, str] | None = None,
    opener: urllib.request.OpenerDirector | None = None,
) -> tuple[int, Message, bytes]:
    """GET without raising on an HTTP error status; headers are case-insensitive."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


@pytest.fixture
def staged_context(tmp_path: Path) -> Path:
    """The files the Dockerfile COPYs, as Docker sends them (.dockerignore applied)."""
    context = tmp_path / "context"
    for ins in instructions("COPY"):
        *sources, _dest = shlex.split(ins.args)
        for source in sources:
            src = ROOT / source
            files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                if not dockerignored(rel):
                    (context / rel).parent.mkdir(parents=True, exist_ok=True)
                    (context / rel).write_bytes(f.read_bytes())
    return context


@pytest.fixture
def installed_venv(tmp_path: Path, staged_context: Path) -> Path:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-q", "-w", str(wheels), str(staged_context)],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("fitdeck-*.whl")
    # A venv of its own, as the image is: the wheel and its dependencies from the
    # index, nothing borrowed from the environment running the tests.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    return venv


@pytest.fixture
def container_like_server(installed_venv: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`fitdeck serve` from the wheel, with the image's environment and compose's
    empty FITDECK_TOKEN; only the port, the database folder and the bind address
    (loopback: a test opens nothing to the network) differ."""
    port = _free_port()
    data = tmp_path / "data"
    data.mkdir()
    image_env = dockerfile_env()
    db = data / PurePosixPath(image_env["FITDECK_DB"]).name
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FITDECK_", "PYTHONPATH"))}
    env.update(image_env)
    env.update(compose_env({}))
    env.update(FITDECK_HOST="127.0.0.1", FITDECK_PORT=str(port), FITDECK_DB=str(db))
    cmd = only("CMD").exec_form()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(installed_venv / "bin" / cmd[0]), *cmd[1:]],
            cwd=data,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"server exited:\n{log_path.read_text()}"
            try:
                if _get(base + "/api/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no health in 60 s:\n{log_path.read_text()}"
            time.sleep(0.2)
        yield {"base": base, "db": db, "env": env, "log": log_path, "venv": installed_venv}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _find_token(db: Path) -> str:
    candidates = [db.with_name(db.name + ".token"), db.with_suffix(".token")]
    for path in candidates:
        if path.exists():
            return path.read_text().strip()
    found = sorted(p.name for p in db.parent.iterdir())
    raise AssertionError(f"no token file beside the database; the folder holds {found}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_installed_like_the_image_serves_the_dashboard(
    container_like_server: dict[str, Any],
) -> None:
    server = container_like_server
    venv: Path = server["venv"]
    base: str = server["base"]

    # The code running is the wheel's, not the checkout's.
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import server; print(server.__file__)"],
        cwd=server["db"].parent,
        env=server["env"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where

    status, _, body = _get(base + "/api/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})

    # The token was generated, kept in the data volume and printed for `docker logs`.
    token = _find_token(server["db"])
    assert len(token) >= 16
    deadline = time.monotonic() + 5
    while token not in server["log"].read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert token in server["log"].read_text(), "token not printed in the server's output"

    status, _, _ = _get(base + "/api/runs")
    assert status in (401, 403), "auth is on by default in the container"

    # A browser arrives once with the printed URL and then holds the cookie.
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    status, headers, body = _get(f"{base}/?token={token}", opener=browser)
    assert status == 200
    assert headers.get("content-type", "").startswith("text/html")
    assert b"<html" in body.lower()
    status, _, body = _get(base + "/api/runs", opener=browser)
    assert status == 200, body

    status, headers, body = _get(base + "/static/vendor/plotly.min.js", opener=browser)
    assert status == 200, "Plotly.js not served from the installed wheel"
    assert "javascript" in headers.get("content-type", "")
    assert len(body) > 1_000_000 and b"plotly" in body[:5000].lower()

    # The dashboard's own files come from the wheel's server/web.
    assets = re.findall(rb'(?:src|href)="(/static/[^"]+)"', _get(base + "/", opener=browser)[2])
    assert any(a.endswith(b".js") and b"vendor" not in a for a in assets), assets
    for asset in assets:
        assert _get(base + asset.decode(), opener=browser)[0] == 200, asset

    # The image's healthcheck command, run as Docker would (inside the
    # container's environment), passes against this server...
    health = healthcheck_of_dockerfile()[1:]
    python = str(venv / "bin" / "python")
    ok = subprocess.run([python, *health[1:]], env=server["env"], timeout=30, check=False)
    assert ok.returncode == 0
    # ... and fails against a port where nothing listens.
    dead = {**server["env"], "FITDECK_PORT": str(_free_port())}
    bad = subprocess.run(
        [python, *health[1:]], env=dead, timeout=30, capture_output=True, check=False
    )
    assert bad.returncode != 0
