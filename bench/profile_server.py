"""Profile the server process under one figure's load with py-spy (a tool for findings).

`python -m bench.profile_server ingest|query OUT.txt` starts a server, attaches
`py-spy record -f raw` to it, runs the load (ingest: 60,000 batch records of 3
metrics from one trainer in 500-record frames; query: 1,000,000 points then 30
metrics queries) and writes py-spy's collapsed stacks to OUT.txt.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

from bench.common import Server
from bench.figures import _ingest, _populate


def main() -> None:
    kind, out = sys.argv[1], sys.argv[2]
    with Server() as server:
        if kind == "query":
            big, _ = asyncio.run(_populate(server, 1_000_000))
        spy = subprocess.Popen(
            ["py-spy", "record", "-r", "500", "-p", str(server.pid), "-f", "raw", "-o", out]
        )
        time.sleep(1.0)
        t0 = time.perf_counter()
        if kind == "ingest":
            elapsed, _, points = asyncio.run(_ingest(server, 1, 60_000, 500))
            print(f"{points / elapsed:,.0f} points/s", flush=True)
        else:
            params = {"scope": "batch", "key": "loss", "max_points": 2000}
            for _ in range(30):
                server.client.get(f"/api/runs/{big}/metrics", params=params).raise_for_status()
            print(f"{(time.perf_counter() - t0) / 30 * 1000:.1f} ms per query", flush=True)
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        spy.wait(30)


if __name__ == "__main__":
    main()
