"""Discovery files: how a training script on this machine finds the running server.

`fitdeck serve` (and `fitdeck demo`) write one small JSON file while they
serve, the way Jupyter does, and remove it when they exit cleanly (Ctrl-C and
SIGTERM included):

    <runtime dir>/server-<pid>.json
    {"url": "http://127.0.0.1:8000", "token": "…", "pid": 4242, "port": 8000,
     "db": "/home/me/project/fitdeck.db", "started": 1767225600.0}

`LiveMonitor()` given neither `url` nor `token` (and no `FITDECK_URL` /
`FITDECK_TOKEN`) reads them once, in its constructor, and streams to the newest
live server with its token.

The runtime directory is, in this order:

1. `$FITDECK_RUNTIME_DIR`, as given (tests, or several isolated setups);
2. `$XDG_RUNTIME_DIR/fitdeck` when `XDG_RUNTIME_DIR` is set and usable (a
   directory owned by this user that this user can write): the per-login
   tmpfs systemd provides, emptied at logout, so files of a crashed server
   do not outlive a reboot;
3. else `$XDG_DATA_HOME/fitdeck/runtime` (`~/.local/share/fitdeck/runtime`), what
   Jupyter uses when there is no runtime directory (macOS, containers, cron);
   on Windows `%LOCALAPPDATA%\\fitdeck\\runtime`.

A file holds the token, so its directory is made mode 0700 and the file 0600.
Readers trust a file only when it is a regular file (not a symlink) owned by
the current user with no group or other permission bits; any other is skipped
with a warning, so a token someone else planted is never adopted. A file whose
`pid` is not a running process is stale (a server killed with SIGKILL): readers
ignore it and delete it. A process id reused after a reboot can make a stale
file in the fallback directory look live; the file then names a server that does
not answer, which costs the callback its usual one warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from server.protocol import DEFAULT_URL, Env

__all__ = [
    "RUNTIME_DIR_ENV",
    "ServerInfo",
    "Target",
    "find_server",
    "live_servers",
    "publish",
    "resolve_target",
    "runtime_dir",
    "same_server",
    "unpublish",
]

log = logging.getLogger("fitdeck.discovery")

RUNTIME_DIR_ENV = "FITDECK_RUNTIME_DIR"
"""Where discovery files are written and read, overriding the default directory."""
PREFIX, SUFFIX = "server-", ".json"
_POSIX = os.name == "posix"

Report = Callable[[str], None]


@dataclass(frozen=True)
class ServerInfo:
    """One running server, as its discovery file describes it."""

    url: str
    """Base URL a client on this machine uses (`http://127.0.0.1:8000`, no token)."""
    token: str | None
    """The token it requires; `None` with `--no-auth`."""
    pid: int
    port: int
    db: str
    """Its SQLite file (absolute); the generated token is kept in `<db>.token`."""
    started: float
    """Unix time it started serving."""
    path: Path
    """The discovery file itself."""


@dataclass(frozen=True)
class Target:
    """Where a client sends its records, and with which token."""

    url: str
    token: str | None
    server: ServerInfo | None
    """The discovery file consulted, when one was."""


def runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    """The directory discovery files live in (see the module docstring)."""
    env = os.environ if env is None else env
    if env.get(RUNTIME_DIR_ENV):
        return Path(env[RUNTIME_DIR_ENV])
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and _usable(Path(xdg)):
        return Path(xdg) / "fitdeck"
    if os.name == "nt":  # pragma: no cover - fitdeck is tested on POSIX
        base = env.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "fitdeck" / "runtime"
    data = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "fitdeck" / "runtime"


def _usable(path: Path) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    owned = not _POSIX or st.st_uid == os.getuid()
    return stat.S_ISDIR(st.st_mode) and owned and os.access(path, os.W_OK | os.X_OK)


# -- the server's side ---------------------------------------------------------


def publish(
    url: str, token: str | None, port: int, db: Path, directory: Path | None = None
) -> Path | None:
    """Write this process's discovery file; its path, or `None` when it cannot be written
    (logged: the server runs on, clients then need `FITDECK_URL` / `FITDECK_TOKEN`)."""
    directory = runtime_dir() if directory is None else directory
    info = {
        "url": url,
        "token": token,
        "pid": os.getpid(),
        "port": port,
        "db": str(Path(db).resolve()),
        "started": time.time(),
    }
    try:
        _private_dir(directory)
        fd, tmp = tempfile.mkstemp(prefix=".server-", suffix=".tmp", dir=directory)  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(info, f, indent=1)
                f.write("\n")
            path = directory / f"{PREFIX}{os.getpid()}{SUFFIX}"
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log.warning(
            "cannot write the discovery file in %s (%s); clients on this machine need "
            "FITDECK_URL and FITDECK_TOKEN to find this server",
            directory,
            exc,
        )
        return None
    return path


def unpublish(path: Path | None) -> None:
    """Remove a discovery file written by `publish` (nothing when it is gone already)."""
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _private_dir(directory: Path) -> None:
    """Make `directory` (mode 0700) or check an existing one is this user's alone.

    Raises:
        OSError: it cannot be made, or belongs to someone else.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _POSIX:  # pragma: no cover
        return
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{directory} is not a directory")
    if st.st_uid != os.getuid():
        raise PermissionError(f"{directory} belongs to user id {st.st_uid}, not to this user")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(directory, 0o700)


# -- the clients' side ---------------------------------------------------------


def live_servers(
    directory: Path | None = None, on_problem: Report = log.warning
) -> list[ServerInfo]:
    """Every running server's discovery file, newest first.

    Files of dead processes are deleted; files this user does not own alone are
    skipped, each reported through `on_problem`.
    """
    directory = runtime_dir() if directory is None else directory
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    servers = []
    for name in names:
        if name.startswith(PREFIX) and name.endswith(SUFFIX):
            info = _read(directory / name, on_problem)
            if info is not None:
                servers.append(info)
    servers.sort(key=lambda s: s.started, reverse=True)
    return servers


def _read(path: Path, on_problem: Report) -> ServerInfo | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:  # a symlink (ELOOP), or gone meanwhile
        if path.is_symlink():
            on_problem(f"fitdeck: ignored the discovery file {path}: it is a symbolic link.")
        else:
            log.debug("cannot open %s: %s", path, exc)
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        problem = _untrusted(st)
        if problem is not None:
            on_problem(
                f"fitdeck: ignored the discovery file {path}: {problem}; its token is not used."
            )
            return None
        try:
            raw: Any = json.loads(f.read(64 * 1024))
            info = ServerInfo(
                url=str(raw["url"]),
                token=str(raw["token"]) if raw.get("token") else None,
                pid=int(raw["pid"]),
                port=int(raw["port"]),
                db=str(raw.get("db") or ""),
                started=float(raw.get("started") or st.st_mtime),
                path=path,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.debug("ignored the malformed discovery file %s: %s", path, exc)
            return None
    if not _alive(info.pid):
        log.debug("removing the stale discovery file %s (pid %d is gone)", path, info.pid)
        unpublish(path)
        return None
    return info


def _untrusted(st: os.stat_result) -> str | None:
    """Why a discovery file must not be trusted, or `None`."""
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if not _POSIX:  # pragma: no cover
        return None
    if st.st_uid != os.getuid():
        return f"it belongs to user id {st.st_uid}, not to you"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return f"others may read or change it (mode {mode:o}, expected 600)"
    return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:  # pragma: no cover - e.g. Windows without the process
        return False
    return True


def same_server(a: str, b: str) -> bool:
    """Do two URLs name the same server? (Scheme family, host, port; loopback names alike.)"""
    return _endpoint(a) == _endpoint(b)


def _endpoint(url: str) -> tuple[bool, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    secure = parts.scheme in ("https", "wss")
    host = (parts.hostname or "").lower()
    if host in ("localhost", "::1") or host.startswith("127."):
        host = "loopback"
    return secure, host, port or (443 if secure else 80)


def find_server(
    url: str | None = None, directory: Path | None = None, on_problem: Report = log.warning
) -> ServerInfo | None:
    """The newest running server (at `url`, when given), or `None`."""
    for server in live_servers(directory, on_problem):
        if url is None or same_server(server.url, url):
            return server
    return None


def resolve_target(
    url: str | None,
    token: str | None,
    env: Mapping[str, str] | None = None,
    on_problem: Report = log.warning,
) -> Target:
    """A client's server and token: the argument, else the environment variable
    (`FITDECK_URL`, `FITDECK_TOKEN`), else the newest live discovery file, else
    `DEFAULT_URL` without a token.

    A discovery file's token is used only for the server it describes: when the
    URL comes from an argument or `FITDECK_URL`, only a file with that same URL
    lends its token.
    """
    env = os.environ if env is None else env
    url = url or env.get(Env.URL) or None
    token = token or env.get(Env.TOKEN) or None
    if url is not None and token is not None:
        return Target(url, token, None)
    server = find_server(url, runtime_dir(env), on_problem)
    if server is None:
        return Target(url or DEFAULT_URL, token, None)
    return Target(url or server.url, token or server.token, server)
