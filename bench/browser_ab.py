#!/usr/bin/env python3
"""
The browser issue's two measurements, each alternating fresh servers and
printing medians and ratios (the machine is shared and noisy: only ratios
from one run of this script mean anything).

    sse        fan-out deliveries/s to S Server-Sent Events streams
               (bench/ssefanout, built here with Go's standard library)
               against S WebSocket subscribers (mqbench fanout -pub http),
               same messages, same publisher; nothing may be lost.
    dashboard  publish requests/s (mqbench pub) with the dashboard open in
               headless chromium (Selenium + chromium-driver) against closed.

    python3 bench/browser_ab.py --mqbench /tmp/mqbench/mqbench --runs 3 sse
    python3 bench/browser_ab.py --mqbench /tmp/mqbench/mqbench --runs 3 dashboard

Loopback only; every run is bounded (--timeout per mqbench run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ab import free_port, stop, wait_listening  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)


def start_server(port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "memmq", f"--address=127.0.0.1:{port}"],
        env=dict(os.environ, PYTHONPATH=CHECKOUT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def last_json(command: list[str], timeout: float) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": (done.stderr or done.stdout).strip()[-200:]}
    return json.loads(lines[-1])


def build_ssefanout() -> str:
    target = os.path.join(tempfile.gettempdir(), "memmq-ssefanout")
    source = os.path.join(HERE, "ssefanout")
    subprocess.run(["go", "build", "-o", target, "."], cwd=source, check=True,
                   env=dict(os.environ, GO111MODULE="off"))
    return target


def with_server(run):
    port = free_port()
    server = start_server(port)
    try:
        wait_listening(port, time.monotonic() + 20)
        return run(f"https://127.0.0.1:{port}", server.pid)
    finally:
        stop(server)


def sse(args) -> dict[str, list[dict]]:
    ssefanout = build_ssefanout()
    shape = ["-s", str(args.subscribers), "-m", str(args.messages), "-b", "64"]

    def websocket(url, pid):
        return last_json([args.mqbench, "-q", "-url", url, "-pid", str(pid), "fanout", *shape, "-pub", "http"],
                         args.timeout)

    def events(url, pid):
        return last_json([ssefanout, "-url", url, "-timeout", f"{int(args.timeout)}s", *shape], args.timeout + 5)

    return alternate(args.runs, {"websocket": websocket, "sse": events}, "deliveries_per_s")


class Dashboard:
    """
    Headless chromium showing the dashboard of the server at C{url}.
    """

    def __init__(self, url: str) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.support.ui import WebDriverWait

        self.profile = tempfile.mkdtemp(prefix="memmq-bench-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for argument in (
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--ignore-certificate-errors", f"--user-data-dir={self.profile}",
            "--window-size=1280,900",
        ):
            options.add_argument(argument)
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
        self.driver.set_page_load_timeout(30)
        self.driver.get(url + "/")
        WebDriverWait(self.driver, 30).until(
            lambda d: d.execute_script("return document.getElementById('server-line').textContent.startsWith('v')")
        )

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, True)


def dashboard(args) -> dict[str, list[dict]]:
    scenario = ["pub", "-c", "16", "-b", "64", "-d", args.duration]

    def closed(url, pid):
        return last_json([args.mqbench, "-q", "-url", url, "-pid", str(pid), *scenario], args.timeout)

    def opened(url, pid):
        page = Dashboard(url)
        try:
            result = closed(url, pid)
            # The page kept polling through the run: it was live.
            result["page_published"] = page.driver.execute_script(
                "return document.getElementById('published').textContent"
            )
            return result
        finally:
            page.close()

    return alternate(args.runs, {"closed": closed, "open": opened}, "requests_per_s")


def alternate(runs: int, variants: dict, key: str) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {name: [] for name in variants}
    names = list(variants)
    for run in range(runs):
        for name in names if run % 2 == 0 else reversed(names):
            result = with_server(variants[name])
            results[name].append(result)
            print(f"run {run + 1} {name:>10}: {result.get(key, result)}", file=sys.stderr)
    base = None
    print(f"{key}, median of {runs}")
    for name in names:
        values = [float(r[key]) for r in results[name] if key in r]
        median = statistics.median(values) if values else float("nan")
        base = median if base is None else base
        bad_fields = ("lost", "out_of_order", "errors", "error", "duplicates")
        trouble = " ".join(f"{bad}={r[bad]}" for r in results[name] for bad in bad_fields if r.get(bad))
        runs_text = " / ".join(f"{v:,.0f}" for v in values)
        ratio = median / base if base else float("nan")
        print(f"  {name:>10}: {median:>12,.0f}  x{ratio:.2f}  ({runs_text}) {trouble}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mqbench", required=True, help="path of the mqbench binary")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--json", help="also write every result to this file, one per line")
    sub = parser.add_subparsers(dest="measure", required=True)
    fanout = sub.add_parser("sse", help="SSE against WebSocket fan-out")
    fanout.add_argument("--subscribers", type=int, default=100)
    fanout.add_argument("--messages", type=int, default=2000)
    page = sub.add_parser("dashboard", help="publish req/s with the dashboard open against closed")
    page.add_argument("--duration", default="5s")
    args = parser.parse_args(argv)
    results = sse(args) if args.measure == "sse" else dashboard(args)
    if args.json:
        with open(args.json, "a") as out:
            for name, items in results.items():
                for item in items:
                    out.write(json.dumps({"measure": args.measure, "variant": name, **item}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
