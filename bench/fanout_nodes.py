#!/usr/bin/env python3
"""
Fan-out across memmq nodes sharing one Redis, measured with mqbench
(README: Redis backplane).

mqbench's fanout scenario talks to one URL; here that URL is an nginx on
loopback that sends every WebSocket /sub to the subscriber nodes in turn
and every /pub to the publisher node, so its subscribers are split over
those nodes and its publisher is on another. The baseline sends everything
through the same nginx to one node without a backplane, and the reference
is mqbench straight to one node without a backplane. Each run starts
fresh servers, alternating the two set-ups, and prints the medians of
deliveries/s, their ratio, and what mqbench saw lost or out of order.

    python3 bench/fanout_nodes.py --mqbench /tmp/mqbench/mqbench --runs 3

Needs redis-server and nginx (Debian's redis-server and nginx-light);
everything listens on 127.0.0.1 on free ports, in a temporary directory,
and is stopped by pid at the end of each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from servers import free_port, wait_listening  # noqa: E402


def wait_port(port: int, tls: bool, deadline: float) -> None:
    wait_listening(port, deadline, tls=tls, what="fanout_nodes: the process")


NGINX = """
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream subscribers {{ {subscribers} keepalive 32; }}
    upstream publishers {{ {publishers} keepalive 32; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        proxy_http_version 1.1;
        proxy_read_timeout 1h;
        proxy_buffering off;
        location /sub {{
            proxy_pass https://subscribers;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
        }}
        location / {{
            proxy_pass https://publishers;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


class Setup:
    """
    One set-up's processes: Redis (if any), the memmq nodes, nginx.
    """

    def __init__(self, directory: str, nodes: int, backplane: bool, nginx: bool = True) -> None:
        self.directory = directory
        self.processes: list[subprocess.Popen] = []
        deadline = time.monotonic() + 30
        extra = []
        if backplane:
            redis_port = free_port()
            self.spawn([
                "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", directory,
            ])
            wait_port(redis_port, False, deadline)
            extra = [f"--backplane=redis://127.0.0.1:{redis_port}"]
        env = dict(os.environ, PYTHONPATH=REPO)
        ports = [free_port() for _ in range(nodes)]
        for port in ports:
            self.spawn([sys.executable, "-m", "memmq", f"--address=127.0.0.1:{port}",
                        f"--cert_file={directory}/cert.pem", f"--key_file={directory}/key.pem", *extra], env)
        for port in ports:
            wait_port(port, True, deadline)
        self.node_pids = [p.pid for p in self.processes if p.args[0] == sys.executable]
        if not nginx:
            self.port = ports[0]
            return
        # Subscribers on every node but the last; the publisher on the last
        # (one node: all on it).
        sub_ports = ports[:-1] or ports
        self.port = free_port()
        with open(os.path.join(directory, "nginx.conf"), "w") as f:
            f.write(NGINX.format(
                dir=directory, port=self.port,
                subscribers=" ".join(f"server 127.0.0.1:{p};" for p in sub_ports),
                publishers=f"server 127.0.0.1:{ports[-1]};",
            ))
        self.spawn(["nginx", "-p", directory, "-c", os.path.join(directory, "nginx.conf")])
        wait_port(self.port, True, deadline)

    def spawn(self, argv: list[str], env: dict | None = None) -> None:
        self.processes.append(subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.directory,
        ))

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def run(args, nodes: int, backplane: bool, nginx: bool) -> dict:
    directory = tempfile.mkdtemp(prefix="memmq-fanout-")
    try:
        from memmq.tls import self_signed_certificate

        certificate = self_signed_certificate("127.0.0.1")
        with open(os.path.join(directory, "cert.pem"), "wb") as f:
            f.write(certificate.chain_pem())
        with open(os.path.join(directory, "key.pem"), "wb") as f:
            f.write(certificate.key_pem())
        setup = Setup(directory, nodes, backplane, nginx)
        try:
            out = subprocess.run(
                [args.mqbench, "-q", "-timeout", f"{args.timeout}s", "-url", f"https://127.0.0.1:{setup.port}",
                 "fanout", "-s", str(args.subscribers), "-m", str(args.messages), "-b", "64", "-pub", "http"],
                capture_output=True, timeout=args.timeout + 10, check=False,
            )
        finally:
            setup.stop()
        lines = [line for line in out.stdout.decode().splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {"error": out.stderr.decode()[-300:]}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mqbench", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--timeout", type=int, default=120)
    args = parser.parse_args()
    for tool in ("redis-server", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"fanout_nodes: {tool} is needed (apt-get install redis-server nginx-light)")
    # The first is the reference: mqbench straight to one node.
    variants = (
        ("one node", 1, False, False), ("nginx+one node", 1, False, True), ("nginx+3 nodes+redis", 3, True, True),
    )
    results: dict[str, list[dict]] = {name: [] for name, *_ in variants}
    for i in range(args.runs):
        for name, nodes, backplane, nginx in (variants if i % 2 == 0 else variants[::-1]):
            result = run(args, nodes, backplane, nginx)
            results[name].append(result)
            print(f"run {i + 1} {name:>20}: deliveries/s {result.get('deliveries_per_s')} lost {result.get('lost')} "
                  f"out_of_order {result.get('out_of_order')} duplicates {result.get('duplicates')}"
                  + (f" error {result['error']}" if "error" in result else ""), file=sys.stderr)
    base = None
    for name, *_ in variants:
        figures = [r["deliveries_per_s"] for r in results[name] if "deliveries_per_s" in r]
        median = statistics.median(figures) if figures else 0.0
        base = base or median
        trouble = {k: sum(r.get(k) or 0 for r in results[name]) for k in ("lost", "out_of_order", "duplicates")}
        print(f"{name:>20}: {median:>12,.0f} deliveries/s  x{median / base if base else 0:.2f}  "
              f"({len(figures)} runs) lost={trouble['lost']} out_of_order={trouble['out_of_order']} "
              f"duplicates={trouble['duplicates']}")


if __name__ == "__main__":
    main()
