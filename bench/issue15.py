#!/usr/bin/env python3
"""
The "Done when" table of issue 15 (``--workers``), in one run.

Every figure comes from a fresh server, the variants of a scenario
alternating from run to run, and is the median of --runs runs (the
machinery of bench/ab.py); the table gives each scenario's medians and the
ratios the issue asks for, with its target. The machine is shared and
noisy: only ratios from one run of this script mean anything.

    python3 bench/issue15.py --mqbench PATH/mqbench --mqbench_grpc PATH/mqbench-grpc \\
        --asim PATH/mq --baseline PATH/memmq-before-issue-15 [--runs 3] [--json table.json]

Scenarios (each row's variants; ``w1``/``w2`` are this checkout with
``--workers 1``/``2``):

  publish      mqbench pub -c 16 -b 64          w2, w1, asim, baseline
                                                 w2/w1 >= 1.6, w2/asim >= 0.3, w1/baseline >= 0.9
  topics       mqbench topics -k 10000 -m 1 -p 4  w2, w1         w2/w1 >= 1.5
  fanout       mqbench fanout -s 1000 -m 2000 -pub http
                                    w1, baseline, w2, asim       w1/baseline >= 1.5, w2/asim >= 0.8,
                                                                 nothing lost or out of order
  grpc pub     mqbench-grpc pub -c 16 -b 64     w2, w1 (--transport=grpc)   w2/w1 >= 1.5
  grpc fanout  mqbench-grpc fanout -s 100 -m 5000 -b 64   w2, w1            w2/w1 >= 1.5
  w1 ...       the load generator's other standard scenarios (fanout -s 100 with
               an HTTP and a WebSocket publisher, idle -n 1000, topics -k 2000):
                                    w1, baseline     within noise: w1/baseline >= 0.9
                                                     (bytes per idle subscriber: <= 1.11)

A tool or server not given leaves its rows or columns out. The load
generators read the CPU time of the process they are given: with
``--workers 2`` that is the parent, which does no message work, so the
server_cpu_s of those runs (in --json) is not the server's; the scripts
add server_tree_cpu_s, the server's parent and workers together.

Each publish ratio is printed with this machine's ceiling for it: the most
the numerator could reach with every core busy, from the CPU one request
(or call) took the server and the load generator in the runs. On 2 cores the load generator's share decides:
a w2/w1 ratio cannot pass 2 / (1 + load generator µs / server µs).

Building what it runs:

  mqbench       the Go load generator for asim/mq-compatible brokers (README:
                Layout, the bench/ note): apt-get install golang-go
                golang-github-gorilla-websocket-dev, then its ./build.sh.
  mqbench-grpc  its gRPC sibling: apt-get install golang-go golang-google-grpc-dev
                golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
                golang-golang-x-net-dev, then its ./build.sh (it needs asim/mq's
                source for the generated proto code).
  asim/mq       the Go reference server: with the same Debian Go packages (and
                golang-github-gorilla-handlers-dev), copy its source to
                $GOPATH/src/github.com/asim/mq and run GO111MODULE=off
                GOPATH=$GOPATH:/usr/share/gocode go build -o mq . there.
  baseline      memmq as it was before issue 15's work:
                git worktree add /tmp/memmq-before 4a8a98e
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ab import compare, key_figure, median  # noqa: E402
from servers import parse_variant  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The load generator's standard scenarios not in the table, on
# which --workers 1 is to stay within noise of the single process from
# before issue 15; and what "within noise" is taken to be, from medians
# of 3 on this machine: within 10 %.
OTHER_SCENARIOS = {
    "w1 fanout http": "fanout -s 100 -m 2000 -b 64 -pub http",
    "w1 fanout ws": "fanout -s 100 -m 2000 -b 64 -pub ws",
    "w1 idle": "idle -n 1000 -topics 50",
    "w1 topics": "topics -k 2000 -m 1 -p 4",
}
NOISE = 0.9


def _rows(args) -> list[dict]:
    """
    The table's rows: scenario, load generator, variants, and the ratios
    wanted (numerator, denominator, target, and whether the target is a
    most rather than a least: for bytes per subscriber, less is better).
    """
    checkout = args.checkout
    w1 = parse_variant(f"w1={checkout}::--workers=1")
    w2 = parse_variant(f"w2={checkout}::--workers=2")
    asim = parse_variant(f"asim=exec:{args.asim}") if args.asim else None
    base = parse_variant(f"baseline={args.baseline}") if args.baseline else None
    rows = [
        {
            "name": "publish", "scenario": f"pub -c 16 -b 64 -d {args.pub_seconds}s", "grpc": False,
            "variants": [w2, w1, asim, base],
            "ratios": [("w2", "w1", 1.6), ("w2", "asim", 0.3), ("w1", "baseline", NOISE)],
        },
        {
            "name": "topics", "scenario": "topics -k 10000 -m 1 -p 4", "grpc": False,
            "variants": [w2, w1], "ratios": [("w2", "w1", 1.5)],
        },
        {
            "name": "fanout", "scenario": "fanout -s 1000 -m 2000 -pub http", "grpc": False,
            "variants": [w1, base, w2, asim],
            "ratios": [("w1", "baseline", 1.5), ("w2", "asim", 0.8)],
            "clean": True,
        },
    ]
    # "--workers 1 within noise of today's single process on every other
    # scenario": the rest of the load generator's standard set.
    rows += [
        {
            "name": name, "scenario": scenario, "grpc": False,
            "variants": [w1, base], "ratios": [("w1", "baseline", NOISE, scenario.startswith("idle"))],
        }
        for name, scenario in OTHER_SCENARIOS.items()
    ]
    if args.mqbench_grpc:
        g1 = parse_variant(f"w1={checkout}::--workers=1 --transport=grpc")
        g2 = parse_variant(f"w2={checkout}::--workers=2 --transport=grpc")
        rows += [
            {
                "name": "grpc pub", "scenario": f"pub -c 16 -b 64 -d {args.pub_seconds}s", "grpc": True,
                "variants": [g2, g1], "ratios": [("w2", "w1", 1.5)],
            },
            {
                "name": "grpc fanout", "scenario": args.grpc_fanout, "grpc": True,
                "variants": [g2, g1], "ratios": [("w2", "w1", 1.5)],
            },
        ]
    for row in rows:
        row["variants"] = [v for v in row["variants"] if v is not None]
        names = {v["name"] for v in row["variants"]}
        row["ratios"] = [r for r in row["ratios"] if r[0] in names and r[1] in names]
    return rows


def measure(args, rows: list[dict], out) -> list[dict]:
    """
    Run every row; give each its medians, ratios and problems.
    """
    for row in rows:
        bench = args.mqbench_grpc if row["grpc"] else args.mqbench
        costs: dict = {}
        figures, problems = compare(
            args, row["variants"], [row["scenario"]], args.runs, out, bench, row["grpc"], costs
        )
        row["runs"] = {v["name"]: figures.get((row["scenario"], v["name"]), []) for v in row["variants"]}
        row["medians"] = {name: median(values) for name, values in row["runs"].items()}
        row["cpu_us"] = {
            v["name"]: [median([c[i] for c in costs.get((row["scenario"], v["name"]), [])]) for i in (0, 1)]
            for v in row["variants"]
        }
        row["problems"] = {
            v["name"]: problems.get((row["scenario"], v["name"]), []) for v in row["variants"]
        }
        row["results"] = []
        for numerator, denominator, target, *at_most in row["ratios"]:
            below = row["medians"][denominator]
            ratio = row["medians"][numerator] / below if below else float("nan")
            if at_most and at_most[0]:
                # Less is better: the same margin the other way.
                target, met = 1 / target, ratio <= 1 / target
            else:
                met = ratio >= target
            row["results"].append({
                "ratio": f"{numerator}/{denominator}", "value": ratio, "target": target, "met": met,
                "at_most": bool(at_most and at_most[0]), "ceiling": ceiling(row, numerator, denominator, args.cores),
            })
        if row.get("clean"):
            dirty = [name for name, found in row["problems"].items() if name != "asim" and found]
            row["results"].append({"ratio": "nothing lost or out of order (memmq)", "met": not dirty})
    return rows


def ceiling(row: dict, numerator: str, denominator: str, cores: int) -> float:
    """
    The highest C{numerator}/C{denominator} this machine allows, estimated
    from the CPU each unit of work (request, call, delivery) took in the
    runs: C{numerator} cannot do more than C{cores} / (server µs + load
    generator µs per unit) units a second, all cores busy, none idle.

    NaN where a figure is missing.
    """
    server, client = row["cpu_us"].get(numerator, (float("nan"), float("nan")))
    below = row["medians"].get(denominator) or float("nan")
    return cores * 1e6 / (server + client) / below


def table(rows: list[dict], runs: int) -> str:
    lines = [f"issue 15, Done when: medians of {runs} runs, fresh servers, variants alternating"]
    for row in rows:
        key = key_figure(row["scenario"], row["grpc"])
        tool = "mqbench-grpc" if row["grpc"] else "mqbench"
        lines.append(f"\n{row['name']}: {tool} {row['scenario']}  ({key})")
        for name, value in row["medians"].items():
            values = " / ".join(f"{v:,.0f}" for v in row["runs"][name])
            trouble = " ".join(row["problems"][name])
            server, client = row["cpu_us"][name]
            cpu = f" CPU per unit: server {server:,.1f} µs, load generator {client:,.1f} µs" if server == server else ""
            lines.append(f"  {name:>9} {value:>12,.0f}   ({values}){cpu} {trouble}".rstrip())
        for result in row["results"]:
            mark = "met" if result["met"] else "NOT met"
            if "value" in result:
                sign = "<=" if result["at_most"] else ">="
                line = f"  {result['ratio']:>19} = {result['value']:.2f}  (target {sign} {result['target']:.2f}) {mark}"
                if not result["at_most"] and result["ceiling"] == result["ceiling"]:
                    line += f"; this machine's ceiling ~{result['ceiling']:.2f}"
                lines.append(line)
            else:
                lines.append(f"  {result['ratio']}: {mark}")
    return "\n".join(lines)


def _interrupted(signum, frame):
    # Unwind through every finally: the servers started are stopped.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mqbench", required=True, help="path of the mqbench binary")
    parser.add_argument("--mqbench_grpc", help="path of the mqbench-grpc binary (no gRPC rows without it)")
    parser.add_argument("--asim", help="path of asim/mq's binary (no asim/mq column without it)")
    parser.add_argument(
        "--baseline", help="a memmq checkout from before issue 15 (commit 4a8a98e; no baseline column without it)"
    )
    parser.add_argument("--checkout", default=HERE, help="the memmq checkout measured (default: this one)")
    parser.add_argument(
        "--cores", type=int, default=len(os.sched_getaffinity(0)),
        help="cores the servers and load generators share, for the ceilings (default: the usable CPUs)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per variant and scenario (median of them)")
    parser.add_argument("--pub_seconds", type=int, default=5, help="how long each pub run lasts")
    parser.add_argument("--grpc_fanout", default="fanout -s 100 -m 5000 -b 64", help="the gRPC fan-out scenario")
    parser.add_argument("--timeout", type=float, default=180, help="seconds one load generator run may take")
    parser.add_argument(
        "--start_wait", type=float, default=30, help="seconds a server may take to answer after it starts"
    )
    parser.add_argument("--only", action="append", help="run only this row (publish, topics, fanout, grpc pub, ...)")
    parser.add_argument("--json", help="also write the table, and every run's result, to this file as JSON")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    rows = _rows(args)
    if args.only:
        rows = [row for row in rows if row["name"] in args.only]
    runs_path = f"{args.json}.runs.jsonl" if args.json else None
    out = open(runs_path, "w") if runs_path else None
    try:
        measure(args, rows, out)
    finally:
        if out:
            out.close()
    print(table(rows, args.runs))
    if args.json:
        with open(args.json, "w") as f:
            summary = [
                {
                    key: row[key]
                    for key in ("name", "scenario", "grpc", "runs", "medians", "cpu_us", "problems", "results")
                }
                for row in rows
            ]
            json.dump({"runs": args.runs, "rows": summary, "results_file": runs_path}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
