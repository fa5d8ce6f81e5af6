"""Where figure 1's overhead goes: CPU seconds per thread and per process during one fit.

`python -m bench.profile_overhead [--steps 3000]` starts a server, runs the
same tiny-MLP `fit` without a callback and with LiveMonitor, and prints, for
each: wall time, CPU time of the training thread, of LiveMonitor's stream
thread, of TensorFlow's other threads, and of the server process. Not part of
`python -m bench`; a tool for the report's findings.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import Any

from bench.common import Server

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread just ended
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from bench.fitwork import make_data, make_model
    from client_callback import LiveMonitor

    x, y = make_data(args.steps // 3)
    model = make_model()
    model.fit(x[:64], y[:64], batch_size=1, epochs=1, verbose=0)
    me = os.getpid()
    main_tid = threading.get_native_id()
    with Server() as server:
        print(f"server pid {server.pid}", flush=True)
        for r in range(args.repeats):
            for name in ("none", "fitdeck"):
                callbacks: list[Any] = []
                monitor = None
                chunks: list[int] = []
                if name == "fitdeck":
                    monitor = LiveMonitor(url=server.url, run_name="profile")
                    callbacks = [monitor]
                    inner = monitor._stream._next_chunk

                    def counted(inner: Any = inner, chunks: list[int] = chunks) -> Any:
                        chunk = inner()
                        if chunk:
                            chunks.append(len(chunk))
                        return chunk

                    monitor._stream._next_chunk = counted  # type: ignore[method-assign]
                before, srv0 = thread_cpu(me), process_cpu(server.pid)
                latest: dict[int, float] = {}
                done = threading.Event()

                def sample(latest: dict[int, float] = latest, done: threading.Event = done) -> None:
                    while not done.wait(0.02):  # threads that end take their /proc entry along
                        latest.update(thread_cpu(me))

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                t0 = time.perf_counter()
                model.fit(x, y, batch_size=1, epochs=3, verbose=0, callbacks=callbacks)
                wall = time.perf_counter() - t0
                done.set()
                sampler.join()
                after, srv1 = {**latest, **thread_cpu(me)}, process_cpu(server.pid)
                after.pop(sampler.native_id or -1, None)
                stream_tid = None
                if monitor is not None and monitor._stream._thread is not None:
                    stream_tid = monitor._stream._thread.native_id
                delta = {t: after[t] - before.get(t, 0.0) for t in after}
                main_cpu = delta.get(main_tid, 0.0)
                stream_cpu = delta.get(stream_tid, 0.0) if stream_tid else 0.0
                other = sum(delta.values()) - main_cpu - stream_cpu
                print(
                    f"{r} {name:8s} wall {wall:5.2f} s | training thread {main_cpu:5.2f} s | "
                    f"stream thread {stream_cpu:5.2f} s | other TF threads {other:5.2f} s | "
                    f"server process {srv1 - srv0:5.2f} s"
                    + (
                        f" | {len(chunks)} records frames, {sum(chunks) / len(chunks):.1f} "
                        "records per frame"
                        if chunks
                        else ""
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
