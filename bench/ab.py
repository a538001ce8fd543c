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
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from servers import free_port, parse_variant, start, stop, wait_listening  # noqa: E402

KEY_FIGURES = {
    "pub": "requests_per_s",
    "fanout": "deliveries_per_s",
    "topics": "deliveries_per_s",
    "idle": "bytes_per_subscriber",
}

# mqbench-grpc's names for the same figures.
GRPC_KEY_FIGURES = {"pub": "calls_per_s", "fanout": "deliveries_per_s"}

PROBLEMS = ("lost", "out_of_order", "errors", "error", "duplicates")

# What one unit of work is, in each load generator's result: a request or
# a call. Only for pub, whose rate is over the whole run as the CPU time is;
# fanout's and topics' rates are over the publishing only, while the CPU
# time also holds connecting the subscribers.
UNITS = {"pub": ("requests", "calls")}


def cpu_per_unit(result: dict, scenario: str) -> tuple[float, float] | None:
    """
    The server's and the load generator's CPU time per unit of work (µs
    per request, call or delivery) in one run's C{result}, or None if it
    does not say. The server's is its whole process tree's (a --workers
    server's parent and workers, L{tree_cpu_seconds}) over the load
    generator's run, which includes the load generator's set-up (connecting
    its connections).
    """
    names = UNITS.get(shlex.split(scenario)[0], ())
    units = next((result[name] for name in names if result.get(name)), 0)
    server = result.get("server_tree_cpu_s", result.get("server_cpu_s"))
    if not units or server is None or "client_cpu_s" not in result:
        return None
    return server / units * 1e6, result["client_cpu_s"] / units * 1e6


def key_figure(scenario: str, grpc: bool = False) -> str:
    """
    The figure compared for C{scenario} (mqbench's, or mqbench-grpc's).
    """
    name = shlex.split(scenario)[0]
    return (GRPC_KEY_FIGURES if grpc else KEY_FIGURES)[name]


def tree_cpu_seconds(pid: int) -> float:
    """
    The CPU time (user and system, in seconds) used so far by process
    C{pid} and every live descendant of it: a --workers server's parent
    and its workers together. 0 for a process that has gone.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    pending += [int(child) for child in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def run_one(args, variant: dict, scenario: str, bench: str | None = None, grpc: bool = False) -> dict:
    """
    Start a fresh server of C{variant}, run C{scenario} against it with
    mqbench (or, with C{grpc}, mqbench-grpc: C{bench}), stop the server;
    return the load generator's JSON result, or C{{"error": ...}}.
    C{args} gives C{mqbench}, C{timeout} and C{start_wait}.
    """
    port = free_port()
    server = start(variant, port)
    try:
        wait_listening(port, time.monotonic() + args.start_wait)
        if grpc:
            command = [bench, "-q", "-addr", f"127.0.0.1:{port}", "-pid", str(server.pid)]
        else:
            url = f"https://127.0.0.1:{port}"
            command = [bench or args.mqbench, "-q", "-url", url, "-pid", str(server.pid)]
        for header in variant["headers"]:
            command += ["-H", header]
        command += shlex.split(scenario)
        before = tree_cpu_seconds(server.pid)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"no answer from the load generator in {args.timeout:.0f} s"}
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if not lines:
            return {"error": (done.stderr or done.stdout).strip()[-200:]}
        return {**json.loads(lines[-1]), "server_tree_cpu_s": tree_cpu_seconds(server.pid) - before}
    finally:
        stop(server)


def compare(args, variants: list[dict], scenarios: list[str], runs: int, out=None, bench: str | None = None,
            grpc: bool = False, costs: dict | None = None) -> tuple[dict, dict]:
    """
    Run every scenario against every variant C{runs} times, a fresh server
    each time, alternating the variants' order from run to run; return
    each (scenario, variant name)'s key figures and problems (lost,
    out of order, errors), and write every result to C{out} if given.
    C{costs}, if given, gets each (scenario, variant name)'s
    L{cpu_per_unit} of every run.
    """
    figures: dict[tuple[str, str], list[float]] = {}
    problems: dict[tuple[str, str], list[str]] = {}
    for run in range(runs):
        for scenario in scenarios:
            key = key_figure(scenario, grpc)
            order = variants if run % 2 == 0 else list(reversed(variants))
            for variant in order:
                result = run_one(args, variant, scenario, bench, grpc)
                if out:
                    out.write(json.dumps({**result, "variant": variant["name"], "scenario": scenario}) + "\n")
                    out.flush()
                label = (scenario, variant["name"])
                if key in result:
                    figures.setdefault(label, []).append(float(result[key]))
                cost = cpu_per_unit(result, scenario)
                if costs is not None and cost:
                    costs.setdefault(label, []).append(cost)
                for bad in PROBLEMS:
                    if result.get(bad):
                        problems.setdefault(label, []).append(f"{bad}={result[bad]}")
                print(f"run {run + 1} {variant['name']:>10} {scenario}: {result.get(key, result)}", file=sys.stderr)
    return figures, problems


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


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
    out = open(args.json, "a") if args.json else None
    figures, problems = compare(args, variants, args.scenario, args.runs, out)
    for scenario in args.scenario:
        key = key_figure(scenario)
        base = None
        print(f"{scenario}  ({key}, median of {args.runs})")
        for variant in variants:
            values = figures.get((scenario, variant["name"]), [])
            middle = median(values)
            base = middle if base is None else base
            ratio = middle / base if base else float("nan")
            trouble = " ".join(problems.get((scenario, variant["name"]), []))
            runs = " / ".join(f"{v:,.0f}" for v in values)
            print(f"  {variant['name']:>10}: {middle:>12,.0f}  x{ratio:.2f}  ({runs}) {trouble}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
