#!/usr/bin/env python3
"""
What access control adds to one request, in-process (no sockets, so the
shared machine's noise matters less than in an end-to-end run): the check
of a publish with access control off, on with the identity already found
on the connection (every request after a connection's first), and on for a
connection's first request (the token hashed and looked up).

    python3 bench/access_bench.py [--users N] [--seconds S]

Bounded: each measurement runs for --seconds (default 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock  # noqa: E402
from twisted.web.test.requesthelper import DummyChannel, DummyRequest  # noqa: E402

from memmq.auth import hash_token, make_authority, new_token  # noqa: E402
from memmq.server.access import Access  # noqa: E402


def per_call(f, seconds: float) -> float:
    """
    Microseconds per call of C{f}, over about C{seconds}.
    """
    calls, started = 0, time.perf_counter()
    while True:
        for _ in range(1000):
            f()
        calls += 1000
        took = time.perf_counter() - started
        if took >= seconds:
            return took / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    token = new_token()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "auth.toml")
        users = [f'[[user]]\nname = "u{i}"\ntoken = "{hash_token(new_token())}"\npublish = [">"]\n'
                 for i in range(args.users - 1)]
        users.append(f'[[user]]\nname = "bench"\ntoken = "{hash_token(token)}"\npublish = ["orders.>"]\n')
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("\n".join(users))
        on = Access(make_authority(auth_file=path), clock=Clock())
    off = Access(clock=Clock())

    def request(channel=None):
        r = DummyRequest([b"pub"])
        r.requestHeaders.setRawHeaders(b"authorization", [f"Bearer {token}".encode()])
        if channel is not None:
            r.channel = channel
        return r

    kept = request(DummyChannel())
    base = per_call(lambda: request(), args.seconds)
    results = {
        "off": per_call(lambda: off.check_publish(kept, "orders.new"), args.seconds),
        "on, identity kept on the connection": per_call(lambda: on.check_publish(kept, "orders.new"), args.seconds),
        f"on, a connection's first request ({args.users} users)": per_call(
            lambda: on.check_publish(request(DummyChannel()), "orders.new"), args.seconds
        ) - base,
    }
    for name, micros in results.items():
        print(f"{name:55s} {micros:8.2f} µs per request")


if __name__ == "__main__":
    main()
