#!/usr/bin/env python
"""Make docs/screenshot.png from a real run: the README's picture of the dashboard.

Starts `python -m server serve` on a temporary database, trains a small Keras
network on the demo's spirals through `client_callback.LiveMonitor` (with
ReduceLROnPlateau, and one learning-rate change sent from "the dashboard"
over HTTP halfway), then opens the run page in Debian's Chromium through
Playwright (never a downloaded browser) and saves the screenshot.

    python scripts/screenshot.py [--out docs/screenshot.png] [--epochs 14] [--dark]
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("FITDECK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(db: Path, port: int, token: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "server", "serve", "--port", str(port), "--db", str(db)]
    proc = subprocess.Popen([*cmd, "--token", token], cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("the fitdeck server did not start")


def train(url: str, token: str, epochs: int) -> str:
    """A real `model.fit` streaming into the server; returns the run id."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    import keras

    from client_callback import LiveMonitor
    from server.demo import train_spirals

    monitor = LiveMonitor(
        url=url,
        token=token,
        run_name="spirals-adam",
        project="demo",
        params={"hidden": [64, 64], "dropout": 0.0, "data": "3 spirals, 3000 points"},
    )
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"})

    def halfway(epoch: int, logs: Any = None) -> None:
        # What a user does from the dashboard's "Set LR" box, as plain HTTP.
        if epoch == epochs // 2 - 1:
            client.post(
                f"/api/runs/{monitor.run_id}/commands", json={"kind": "set_lr", "lr": 0.003}
            )

    train_spirals(monitor, epochs, 0.004, keras.callbacks.LambdaCallback(on_epoch_end=halfway))
    client.close()
    return str(monitor.run_id)


def shoot(url: str, token: str, run_id: str, out: Path, dark: bool, epochs: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1280, "height": 900},
            device_scale_factor=1,
            color_scheme="dark" if dark else "light",
        )
        page = context.new_page()
        page.goto(f"{url}/?token={token}")
        page.goto(f"{url}/#/runs/{run_id}")
        page.wait_for_selector('.chart[data-key="loss"][data-points]')
        page.wait_for_selector('.chart[data-key="accuracy"][data-points]')
        page.wait_for_selector("#run-status[data-status='finished']")
        page.click("#scope-epoch")  # loss beside val_loss, one point per epoch
        page.wait_for_selector(f'.chart[data-key="loss"][data-points="{2 * epochs}"]')
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.wait_for_timeout(800)  # the last coalesced redraw
        page.screenshot(path=str(out))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--dark", action="store_true", help="dark color scheme")
    args = parser.parse_args()
    token = secrets.token_hex(8)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_server(Path(tmp) / "fitdeck.db", port, token)
        try:
            run_id = train(url, token, args.epochs)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            shoot(url, token, run_id, args.out, args.dark, args.epochs)
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
