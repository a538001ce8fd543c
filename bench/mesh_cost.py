#!/usr/bin/env python3
"""
What one message costs between two workers of ``--workers`` (README:
Workers): two mesh backplanes (memmq.backplane.mesh) in this process, joined
by real Unix sockets in a temporary directory, one following a topic, the
other publishing N messages to it; prints the CPU time (user + system, both
sides and the kernel's socket work) per message, and the same for a topic
nobody follows (what interest saves); then the same for a topic that a queue
group with a member on each side reaches (each message routed to one of
them: half cross), and for a topic a pattern on the other side matches.

    python3 bench/mesh_cost.py [-n 200000] [-b 64]

Loopback only (Unix sockets); bounded by -n.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import reactor  # noqa: E402

from memmq.backplane.mesh import MeshBackplane  # noqa: E402
from memmq.patterns import Pattern  # noqa: E402


class _Count:
    def __init__(self) -> None:
        self.count = 0

    def received(self, topic, payload, plain=True, groups=None, stamp=None) -> None:
        self.count += 1


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200_000)
    parser.add_argument("-b", type=int, default=64)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="memmq-mesh-bench-")
    paths = [os.path.join(directory, f"mesh-{i}.sock") for i in range(2)]
    sockets = []
    for path in paths:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(16)
        s.setblocking(False)
        sockets.append(s)
    a, b = (MeshBackplane(reactor, i, paths, sockets[i].fileno()) for i in range(2))
    counter = _Count()
    a.start(_Count())
    b.start(counter)
    b.interest("t", True)
    payload = b"x" * args.b
    results = {}

    def wait(condition, then, deadline):
        if condition():
            then()
        elif time.monotonic() > deadline:
            print("mesh_cost: timed out", file=sys.stderr)
            reactor.stop()
        else:
            reactor.callLater(0.001, wait, condition, then, deadline)

    def run():
        # Batches of 1000 per reactor turn, as a busy worker publishes.
        start = _cpu()
        sent = [0]

        def burst():
            for _ in range(min(1000, args.n - sent[0])):
                a.publish("t", payload)
            sent[0] += 1000
            if sent[0] < args.n:
                reactor.callLater(0, burst)

        burst()

        def done():
            results["followed"] = (_cpu() - start) / args.n
            start2 = _cpu()
            for _ in range(args.n):
                a.publish("nobody", payload)
            results["nobody"] = (_cpu() - start2) / args.n
            a.interest("g", True, "workers")
            b.interest("g", True, "workers")
            b.interest(Pattern("p.*"), True)
            wait(lambda: a.remote_subjects() == 2, routed, time.monotonic() + 10)

        wait(lambda: counter.count >= args.n, done, time.monotonic() + 120)

    def timed(topic, expected, name, then):
        # As BackplaneBroker publishes: route, (local delivery), publish.
        start = _cpu()
        base = counter.count
        sent = [0]

        def burst():
            for _ in range(min(1000, args.n - sent[0])):
                a.publish(topic, payload, route=a.route(topic))
            sent[0] += 1000
            if sent[0] < args.n:
                reactor.callLater(0, burst)

        def done():
            results[name] = (_cpu() - start) / args.n
            then()

        burst()
        wait(lambda: counter.count - base >= expected, done, time.monotonic() + 120)

    def routed():
        timed("g", args.n // 2, "group", lambda: timed("p.x", args.n, "pattern", reactor.stop))

    wait(lambda: a._peers.get(1) == {"t"}, run, time.monotonic() + 10)
    reactor.run()
    for s in sockets:
        s.close()
    shutil.rmtree(directory, ignore_errors=True)
    if "followed" in results:
        print(f"cross-worker message ({args.b} B payload): {results['followed'] * 1e6:.2f} us CPU "
              f"(send + kernel + receive); to a topic nobody elsewhere follows: {results['nobody'] * 1e6:.2f} us")
    if "pattern" in results:
        print(f"with patterns and groups followed: a queue group's message (half cross) "
              f"{results['group'] * 1e6:.2f} us; a pattern's {results['pattern'] * 1e6:.2f} us")


if __name__ == "__main__":
    main()
