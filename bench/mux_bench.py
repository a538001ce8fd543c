#!/usr/bin/env python3
"""
The figures of patterns, queue groups and memmq.v1 (README, "One
connection, many subscriptions"), against fresh servers of this checkout,
alternating the two cases of each comparison; prints the medians and
ratios. The machine is shared and noisy: only ratios from one run of this
script mean anything.

    bench/muxload/build.sh        # builds bench/muxload/muxload (Go, gorilla/websocket)
    python3 bench/mux_bench.py --mqbench /tmp/mqbench/mqbench --runs 3

1. publish: mqbench ``pub`` (requests/s) with 10,000 pattern subscriptions
   registered that match nothing published (held by ``muxload hold`` on one
   memmq.v1 connection) against none;
2. memory: ``muxload subs``: one memmq.v1 connection with 5,000 topic
   subscriptions, the server's RSS growth per subscription;
3. fan-out: ``muxload fanout``: deliveries/s to 100 memmq.v1 connections
   against 100 plain /sub WebSockets, one topic, one publisher; lost, out of
   order and duplicates counted.

Loopback only; every step bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ab import free_port, start, stop, wait_listening  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
MUXLOAD = os.path.join(HERE, "muxload", "muxload")
VARIANT = {"checkout": CHECKOUT, "args": [], "headers": []}


def _last_json(text: str) -> dict:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": text.strip()[-200:]}


def _server():
    port = free_port()
    server = start(VARIANT, port)
    wait_listening(port, time.monotonic() + 30)
    return server, f"https://127.0.0.1:{port}"


def publish(args, patterns: int) -> float:
    server, url = _server()
    holder = None
    try:
        if patterns:
            holder = subprocess.Popen(
                [MUXLOAD, "-url", url, "hold", "-k", str(patterns), "-d", "120s"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
            line = holder.stdout.readline()
            if '"hold"' not in line:
                raise SystemExit(f"mux_bench: muxload hold: {line.strip()}")
        done = subprocess.run(
            [args.mqbench, "-q", "-url", url, *shlex.split(args.pub)],
            capture_output=True, text=True, timeout=120,
        )
        return _last_json(done.stdout).get("requests_per_s", 0.0)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        stop(server)


def memory(args) -> dict:
    server, url = _server()
    try:
        done = subprocess.run(
            [MUXLOAD, "-url", url, "-pid", str(server.pid), "subs", "-k", str(args.subscriptions)],
            capture_output=True, text=True, timeout=300,
        )
        return _last_json(done.stdout)
    finally:
        stop(server)


def fanout(args, mode: str) -> dict:
    server, url = _server()
    try:
        done = subprocess.run(
            [MUXLOAD, "-url", url, "fanout", "-mode", mode, *shlex.split(args.fanout)],
            capture_output=True, text=True, timeout=300,
        )
        return _last_json(done.stdout)
    finally:
        stop(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mqbench", default="/tmp/mqbench/mqbench")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--patterns", type=int, default=10_000)
    parser.add_argument("--subscriptions", type=int, default=5000)
    parser.add_argument("--pub", default="pub -c 16 -b 64 -d 5s", help="the mqbench publish scenario")
    parser.add_argument("--fanout", default="-s 100 -m 20000 -b 64", help="muxload fanout flags")
    parser.add_argument("--only", choices=("publish", "memory", "fanout"), action="append")
    args = parser.parse_args(argv)
    if not os.path.exists(MUXLOAD):
        raise SystemExit(f"mux_bench: build {MUXLOAD} first: bench/muxload/build.sh")
    only = set(args.only or ("publish", "memory", "fanout"))
    if "publish" in only:
        none, some = [], []
        for _ in range(args.runs):
            none.append(publish(args, 0))
            some.append(publish(args, args.patterns))
        a, b = statistics.median(none), statistics.median(some)
        print(f"publish req/s: no patterns {a:.0f}, {args.patterns} patterns {b:.0f}, ratio {b / a:.3f}"
              f"  (runs: {[round(x) for x in none]} vs {[round(x) for x in some]})")
    if "memory" in only:
        results = [memory(args) for _ in range(args.runs)]
        per = [r.get("bytes_per_subscription", float("nan")) for r in results]
        print(f"memory per subscription ({args.subscriptions} topics, one memmq.v1 connection): "
              f"median {statistics.median(per):.0f} bytes  (runs: {[round(x) for x in per]})")
    if "fanout" in only:
        plain, mux = [], []
        for _ in range(args.runs):
            plain.append(fanout(args, "plain"))
            mux.append(fanout(args, "mux"))
        for name, results in (("plain /sub", plain), ("memmq.v1", mux)):
            for r in results:
                if "error" in r or r.get("lost") or r.get("out_of_order") or r.get("duplicates"):
                    print(f"  {name}: {r}")
        a = statistics.median(r.get("deliveries_per_s", 0.0) for r in plain)
        b = statistics.median(r.get("deliveries_per_s", 0.0) for r in mux)
        lost = sum(r.get("lost", 0) for r in plain + mux)
        disorder = sum(r.get("out_of_order", 0) + r.get("duplicates", 0) for r in plain + mux)
        print(f"fan-out deliveries/s: plain /sub {a:.0f}, memmq.v1 {b:.0f}, ratio {b / a:.3f}; "
              f"lost {lost}, out of order or duplicated {disorder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
