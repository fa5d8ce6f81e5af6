"""The `fitdeck` command line: `serve`, `demo`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from server.auth import is_loopback
from server.settings import DEFAULT_DB, DEFAULT_HOST, DEFAULT_PORT, Settings

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
    sync.add_argument("--token", default=None, help="token (default: FITDECK_TOKEN)")
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


def settings_from_args(args: argparse.Namespace) -> Settings:
    hosts = tuple(args.allowed_host) if args.allowed_host else None
    settings = Settings.from_env(
        host=args.host, port=args.port, db=args.db, token=args.token, allowed_hosts=hosts
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
    if args.command == "serve":
        from server.runner import serve

        serve(settings)
        return 0
    if args.command == "demo":
        from server.demo import run_demo

        code: int = run_demo(settings, epochs=args.epochs, keep_serving=not args.exit)
        return code
    raise AssertionError(args.command)  # pragma: no cover


def run_sync(args: argparse.Namespace) -> int:
    from server.sync import sync

    results = sync(args.path, url=args.url, token=args.token, timeout=args.timeout)
    if not results:
        print("fitdeck sync: nothing to upload", file=sys.stderr)
    for r in results:
        outcome = (
            "uploaded" if r.done else f"NOT uploaded ({r.error or 'not acknowledged in time'})"
        )
        print(f"{r.path}: run {r.run_id}, {r.records} records {outcome} to {r.url}")
    return 0 if all(r.done for r in results) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
