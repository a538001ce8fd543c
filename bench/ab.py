#!/usr/bin/env python3
"""
Compare memmq builds or configurations side by side with mqbench.

Each run starts a fresh server per variant and scenario, alternating the
variants, and prints the median of each scenario's key figure per variant
and its ratio to the first variant. The machine is shared and noisy, so
only ratios measured in one run of this script mean anything.

    python3 bench/ab.py --mqbench PATH/mqbench --runs 3 \\
        --variant "before=/path/to/old/checkout" \\
        --variant "after=." \\
        --scenario "pub -c 16 -b 64 -d 5s" \\
        --scenario "fanout -s 100 -m 2000 -b 64 -pub http"

A variant is NAME=CHECKOUT[::SERVER ARGS], e.g. ``auth=.::--auth_file=a.toml``;
the server is ``python3 -m memmq`` imported from CHECKOUT. ``--extra-header``
is passed to mqbench for the variants whose name is given with it
(``--header auth="Authorization: Bearer X"``). A variant whose CHECKOUT is
``exec:PROGRAM`` runs that program instead (e.g. asim/mq's binary) with
``--address=HOST:PORT`` and the server args.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time

KEY_FIGURES = {
    "pub": "requests_per_s",
    "fanout": "deliveries_per_s",
    "topics": "deliveries_per_s",
    "idle": "bytes_per_subscriber",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, deadline: float) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
                with context.wrap_socket(raw):
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"ab: the server on port {port} did not answer in time")


def start(variant: dict, port: int) -> subprocess.Popen:
    address = f"--address=127.0.0.1:{port}"
    if variant["checkout"].startswith("exec:"):
        argv = [variant["checkout"][5:], address, *variant["args"]]
        env = dict(os.environ)
    else:
        argv = [sys.executable, "-m", "memmq", address, *variant["args"]]
        env = dict(os.environ, PYTHONPATH=os.path.abspath(variant["checkout"]))
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_one(args, variant: dict, scenario: str) -> dict:
    port = free_port()
    server = start(variant, port)
    try:
        wait_listening(port, time.monotonic() + args.start_wait)
        command = [args.mqbench, "-q", "-url", f"https://127.0.0.1:{port}", "-pid", str(server.pid)]
        for header in variant["headers"]:
            command += ["-H", header]
        command += shlex.split(scenario)
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if not lines:
            return {"error": (done.stderr or done.stdout).strip()[-200:]}
        return json.loads(lines[-1])
    finally:
        stop(server)


def parse_variant(text: str, headers: dict[str, list[str]]) -> dict:
    name, _, rest = text.partition("=")
    checkout, _, server_args = rest.partition("::")
    return {
        "name": name,
        "checkout": checkout or ".",
        "args": shlex.split(server_args),
        "headers": headers.get(name, []),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mqbench", required=True, help="path of the mqbench binary")
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--scenario", action="append", required=True)
    parser.add_argument("--header", action="append", default=[], help='NAME="Header: value"')
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument(
        "--start_wait", type=float, default=20, help="seconds a server may take to answer after it starts"
    )
    parser.add_argument("--json", help="also write every result to this file, one per line")
    args = parser.parse_args(argv)
    headers: dict[str, list[str]] = {}
    for item in args.header:
        name, _, header = item.partition("=")
        headers.setdefault(name, []).append(header)
    variants = [parse_variant(v, headers) for v in args.variant]
    figures: dict[tuple[str, str], list[float]] = {}
    problems: dict[tuple[str, str], list[str]] = {}
    out = open(args.json, "a") if args.json else None
    for run in range(args.runs):
        for scenario in args.scenario:
            key = KEY_FIGURES[shlex.split(scenario)[0]]
            order = variants if run % 2 == 0 else list(reversed(variants))
            for variant in order:
                result = run_one(args, variant, scenario)
                if out:
                    out.write(json.dumps({"variant": variant["name"], "scenario": scenario, **result}) + "\n")
                label = (scenario, variant["name"])
                if key in result:
                    figures.setdefault(label, []).append(float(result[key]))
                for bad in ("lost", "out_of_order", "errors", "error", "duplicates"):
                    if result.get(bad):
                        problems.setdefault(label, []).append(f"{bad}={result[bad]}")
                print(f"run {run + 1} {variant['name']:>10} {scenario}: {result.get(key, result)}", file=sys.stderr)
    for scenario in args.scenario:
        key = KEY_FIGURES[shlex.split(scenario)[0]]
        base = None
        print(f"{scenario}  ({key}, median of {args.runs})")
        for variant in variants:
            values = figures.get((scenario, variant["name"]), [])
            median = statistics.median(values) if values else float("nan")
            base = median if base is None else base
            ratio = median / base if base else float("nan")
            trouble = " ".join(problems.get((scenario, variant["name"]), []))
            runs = " / ".join(f"{v:,.0f}" for v in values)
            print(f"  {variant['name']:>10}: {median:>12,.0f}  x{ratio:.2f}  ({runs}) {trouble}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
