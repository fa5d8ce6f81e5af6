"""The `fitdeck` command line: `serve`, `demo`, `sync`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from server.auth import TokenFileError, is_loopback
from server.protocol import DEFAULT_URL, Env
from server.settings import DEFAULT_DB, DEFAULT_HOST, DEFAULT_PORT, Settings

if TYPE_CHECKING:
    from server.sync import SyncResult

__all__ = ["build_parser", "main", "settings_from_args", "warn_if_open"]

log = logging.getLogger("fitdeck")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fitdeck", description="Live dashboard and remote control for Keras model.fit."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the fitdeck server")
    _add_server_flags(serve)

    demo = sub.add_parser("demo", help="start a server and stream a real Keras training into it")
    _add_server_flags(demo)
    demo.add_argument("--epochs", type=int, default=30, help="epochs to train (default: 30)")
    demo.add_argument(
        "--exit", action="store_true", help="stop the server when training ends (default: keep it)"
    )

    sync = sub.add_parser("sync", help="upload records a training kept in its spool")
    sync.add_argument(
        "path",
        nargs="?",
        type=Path,
        default=None,
        help="a spool file or directory (default: $FITDECK_SPOOL_DIR or ~/.cache/fitdeck/spool)",
    )
    sync.add_argument("--url", default=None, help="server (default: FITDECK_URL, else the run's)")
    sync.add_argument(
        "--token",
        default=None,
        help="token (default: FITDECK_TOKEN, else that of the server running on this machine "
        "when it is the one the records go to)",
    )
    sync.add_argument("--timeout", type=float, default=60.0, help="seconds per file (default: 60)")
    return parser


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default=None, help=f"interface to bind (env FITDECK_HOST, default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", type=int, default=None, help=f"port (env FITDECK_PORT, default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--db", type=Path, default=None, help=f"SQLite file (env FITDECK_DB, default {DEFAULT_DB})"
    )
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument(
        "--token",
        default=None,
        help="token clients must send (env FITDECK_TOKEN; default: generated and kept "
        "beside the database)",
    )
    auth.add_argument(
        "--no-auth", action="store_true", help="turn the token off: anyone who reaches the port"
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="HOST",
        help="a host name the server answers to besides loopback and --host; repeat for more, "
        "'*' for any (env FITDECK_ALLOWED_HOSTS, comma-separated)",
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        default=None,
        metavar="IPS",
        help="proxies whose X-Forwarded-For/-Proto headers are believed, comma-separated "
        "(env FITDECK_FORWARDED_ALLOW_IPS; default: none, loopback included)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    hosts = tuple(args.allowed_host) if args.allowed_host else None
    proxies = None
    if args.forwarded_allow_ips is not None:
        proxies = tuple(p.strip() for p in args.forwarded_allow_ips.split(",") if p.strip())
    settings = Settings.from_env(
        host=args.host,
        port=args.port,
        db=args.db,
        token=args.token,
        allowed_hosts=hosts,
        forwarded_allow_ips=proxies,
    )
    if args.no_auth:
        settings = Settings(**{**settings.__dict__, "auth": False, "token": None})
    return settings


def warn_if_open(settings: Settings) -> None:
    """`--no-auth` is said out loud, and louder when the port is open beyond this machine."""
    if settings.auth:
        return
    if is_loopback(settings.host):
        log.warning(
            "auth is OFF (--no-auth): any program on this machine can stop or steer "
            "training through %s:%s",
            settings.host,
            settings.port,
        )
        return
    log.warning(
        "\n%s\n auth is OFF (--no-auth) and the server listens on %s:%s, beyond this\n"
        " machine: ANYONE WHO CAN REACH THIS PORT CAN STOP OR STEER YOUR TRAINING.\n"
        " Drop --no-auth (a token is then required), or bind 127.0.0.1.\n%s",
        "!" * 78,
        settings.host,
        settings.port,
        "!" * 78,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "sync":
        return run_sync(args)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    warn_if_open(settings)
    try:
        if args.command == "serve":
            from server.runner import serve

            return serve(settings)
        if args.command == "demo":
            from server.demo import run_demo

            return run_demo(settings, epochs=args.epochs, keep_serving=not args.exit)
    except KeyboardInterrupt:  # Ctrl-C: the server has shut down cleanly already
        return 130
    except TokenFileError as exc:
        print(f"fitdeck {args.command}: {exc}", file=sys.stderr, flush=True)
        return 1
    raise AssertionError(args.command)  # pragma: no cover


def run_sync(args: argparse.Namespace) -> int:
    from server.sync import sync

    token = args.token or os.environ.get(Env.TOKEN) or _discovered_token(args)
    results = sync(args.path, url=args.url, token=token, timeout=args.timeout)
    if not results:
        print("fitdeck sync: nothing to upload", file=sys.stderr)
    unreachable: dict[str, tuple[str, list[SyncResult]]] = {}
    for r in results:
        why = _unreachable(r.error) if not r.done else None
        if why is not None:
            unreachable.setdefault(r.url, (why, []))[1].append(r)
            continue
        if r.done:
            outcome = "uploaded"
        elif r.error is not None and _token_refused(r.error):
            outcome = (
                "NOT uploaded: the server refused the token; pass --token or set FITDECK_TOKEN "
                "(`fitdeck serve` prints it and keeps it in <db>.token)"
            )
        else:
            outcome = f"NOT uploaded ({r.error or 'not acknowledged in time'})"
        print(f"{r.path}: run {r.run_id}, {r.records} records {outcome} to {r.url}")
    for url, (why, waiting) in unreachable.items():
        records = sum(r.records for r in waiting)
        files = "1 spool file" if len(waiting) == 1 else f"{len(waiting)} spool files"
        kept = "1 record" if records == 1 else f"{records} records"
        print(
            f"fitdeck sync: no server at {url} ({why}); start it with `fitdeck serve` or pass "
            f"--url. {files} ({kept}) kept for the next try.",
            file=sys.stderr,
        )
    return 0 if all(r.done for r in results) else 1


def _unreachable(error: str | None) -> str | None:
    """Why no server answered, from a sync error; `None` for other errors."""
    if error is None:
        return None
    kind, _, detail = error.partition(": ")
    if kind == "ConnectionRefusedError":
        return "connection refused"
    if kind in ("TimeoutError", "socket.timeout"):
        return "no answer"
    if kind in ("OSError", "ConnectionError", "gaierror", "ConnectionResetError"):
        return detail or kind
    return None


def _token_refused(error: str) -> bool:
    return "1008" in error and "token" in error.lower()


def _discovered_token(args: argparse.Namespace) -> str | None:
    """The token of the server this machine runs, when it is the one sync sends to."""
    from server.discovery import find_server

    url = args.url or os.environ.get(Env.URL)
    if url is None:  # each file goes to the server its run streamed to
        urls = {_spool_url(f) for f in _spool_files(args.path)}
        if len(urls) != 1:
            return None
        url = urls.pop()
    server = find_server(url)
    return server.token if server is not None else None


def _spool_files(path: Path | None) -> list[Path]:
    from server.spool import default_spool_dir

    path = path or default_spool_dir()
    return [path] if path.is_file() else sorted(path.glob("*.jsonl"))


def _spool_url(path: Path) -> str:
    """The server a spool file's run streamed to, from its header line."""
    try:
        with path.open("rb") as f:
            header = json.loads(f.readline() or b"{}")
    except (OSError, ValueError):
        return DEFAULT_URL
    url = header.get("url") if isinstance(header, dict) and "seq" not in header else None
    return str(url or DEFAULT_URL)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
