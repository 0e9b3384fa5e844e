"""Ephemeral port churn: open and close outgoing loopback connections, 2,000 a second by default.

Every outgoing connection takes a local port from the kernel's ephemeral range, and the side that
closes first keeps it in TIME_WAIT for a minute, so this holds tens of thousands of those ports at
any time and hands them back and forth. A port chosen by "bind port 0, close, pass the number on"
comes from the same range and is taken from under the service now and then; the suite, run beside
this, shows that no test depends on that luck:

    .venv/bin/python -m launcher.churn --seconds 3600 &    # then `make test` (docs/development.md)
"""

from __future__ import annotations

import argparse
import socket
import threading
import time


def churn(seconds: float, rate: float = 2000.0, threads: int = 2, report_every_s: float = 0.0) -> int:
    """Connections opened and closed to a local listener over `seconds`, about `rate` a second (0: as
    fast as `threads` can); returns their count."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    address = listener.getsockname()
    stop = threading.Event()
    counts = [0] * threads

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.close()

    gap = threads / rate if rate > 0 else 0.0  # each thread's share of the rate

    def connect(slot: int) -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            if gap:
                next_at += gap
                time.sleep(max(0.0, next_at - time.monotonic()))
            try:
                with socket.create_connection(address, timeout=1):
                    counts[slot] += 1  # closed first by this side: its port waits in TIME_WAIT
            except OSError:
                time.sleep(0.001)  # the range is exhausted for a moment: that is the point

    workers = [threading.Thread(target=accept, daemon=True)]
    workers += [threading.Thread(target=connect, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    started = last = time.monotonic()
    try:
        while (now := time.monotonic()) - started < seconds:
            time.sleep(min(0.2, seconds - (now - started)))
            if report_every_s and time.monotonic() - last >= report_every_s:
                last = time.monotonic()
                print(f"[churn] {sum(counts):,} connections in {last - started:.0f} s", flush=True)
    finally:
        stop.set()
        listener.close()
        for worker in workers:
            worker.join(timeout=2)
    return sum(counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.churn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="connections a second (0: as fast as possible)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    total = churn(args.seconds, args.rate, args.threads, report_every_s=60.0)
    print(f"[churn] {total:,} connections opened and closed in {args.seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
