#!/usr/bin/env python3
"""
Compare memmq checkouts on fan-out over Server-Sent Events: deliveries per
second and the server's CPU per delivery, with bench/ssefanout.

Each run starts a fresh server per variant and scenario (bench/ab.py's
run_one, ssefanout in mqbench's place), alternating the variants, and
prints per variant the medians of deliveries/s and of server CPU per
delivery (CPU from the first publish to the end of the drain, divided by
the deliveries), their ratios to the first variant, and anything lost,
reordered or duplicated. Only ratios from one run of this script mean
anything (the machine is shared).

    cd bench/ssefanout && GO111MODULE=off go build -o /tmp/ssefanout .
    python3 bench/sse_ab.py --ssefanout /tmp/ssefanout --runs 3 \\
        --variant before=PATH/OTHER-CHECKOUT --variant now=. \\
        --scenario "fanout -s 1000 -m 2000 -b 64" --scenario "fanout -s 100 -m 2000"
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ab import PROBLEMS, median, run_one  # noqa: E402
from servers import parse_variant  # noqa: E402


def per_delivery(result: dict) -> float | None:
    """
    The server's CPU time per delivery (µs) of one run, if it reported both.
    """
    cpu, received = result.get("server_cpu_s"), result.get("received")
    return cpu / received * 1e6 if cpu is not None and received else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ssefanout", required=True, help="path of the ssefanout binary")
    parser.add_argument("--variant", action="append", required=True, help="NAME=CHECKOUT[::SERVER ARGS]")
    parser.add_argument("--scenario", action="append", required=True, help='e.g. "fanout -s 1000 -m 2000 -b 64"')
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--start_wait", type=float, default=20)
    parser.add_argument("--json", help="also write every result to this file, one per line")
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    out = open(args.json, "a") if args.json else None
    rates: dict[tuple[str, str], list[float]] = {}
    costs: dict[tuple[str, str], list[float]] = {}
    problems: dict[tuple[str, str], list[str]] = {}
    for run in range(args.runs):
        for scenario in args.scenario:
            order = variants if run % 2 == 0 else list(reversed(variants))
            for variant in order:
                result = run_one(args, variant, scenario, args.ssefanout)
                label = (scenario, variant["name"])
                if out:
                    out.write(json.dumps({**result, "variant": variant["name"], "scenario": scenario}) + "\n")
                    out.flush()
                if "deliveries_per_s" in result:
                    rates.setdefault(label, []).append(result["deliveries_per_s"])
                cost = per_delivery(result)
                if cost is not None:
                    costs.setdefault(label, []).append(cost)
                for bad in PROBLEMS:
                    if result.get(bad):
                        problems.setdefault(label, []).append(f"{bad}={result[bad]}")
                print(f"run {run + 1} {variant['name']:>10} {scenario}: "
                      f"{result.get('deliveries_per_s', result)} deliveries/s, {cost} us/delivery", file=sys.stderr)
    for scenario in args.scenario:
        print(f"{scenario}  (medians of {args.runs})")
        base_rate = base_cost = None
        for variant in variants:
            label = (scenario, variant["name"])
            rate, cost = median(rates.get(label, [])), median(costs.get(label, []))
            base_rate = rate if base_rate is None else base_rate
            base_cost = cost if base_cost is None else base_cost
            trouble = " ".join(problems.get(label, [])) or "nothing lost or out of order"
            print(f"  {variant['name']:>10}: {rate:>10,.0f} deliveries/s x{rate / base_rate:.2f}   "
                  f"{cost:6.2f} us server CPU/delivery x{cost / base_cost:.2f}   {trouble}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
