"""Peers' endpoints for the overhead figures, each run as its own process.

- `http`: a tiny HTTP server that accepts any POST and answers 200 (what
  Keras' `RemoteMonitor` posts to; hualos-like, it keeps nothing).
- `hung`: a raw TCP server that accepts connections and never reads nor
  writes: a server that hangs.

`python -m bench.sinks http|hung --port P` prints `ready` once listening and
runs until killed (or `--max-seconds`, a safety bound).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.common import ROOT, child_env, free_port


class _PostSink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.posts += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_http(port: int, max_seconds: float) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), _PostSink)
    server.posts = 0  # type: ignore[attr-defined]
    threading.Timer(max_seconds, server.shutdown).start()
    print("ready", flush=True)
    server.serve_forever()


def serve_hung(port: int, max_seconds: float) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    listener.settimeout(0.5)
    held: list[socket.socket] = []  # accepted, never read, never written, never closed
    print("ready", flush=True)
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        held.append(conn)


class Sink:
    """A sink process on a free port (context manager)."""

    def __init__(self, kind: str, max_seconds: float = 3600) -> None:
        self.kind = kind
        self.port = free_port()
        self.max_seconds = max_seconds
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Sink:
        cmd = [sys.executable, "-m", "bench.sinks", self.kind, "--port", str(self.port)]
        cmd += ["--max-seconds", str(self.max_seconds)]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.__exit__()
            raise RuntimeError(f"{self.kind} sink did not start: {line!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["http", "hung"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=3600)
    args = parser.parse_args()
    (serve_http if args.kind == "http" else serve_hung)(args.port, args.max_seconds)


if __name__ == "__main__":
    main()
