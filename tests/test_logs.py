"""
Tests for memmq.logs: the memmq command's log forms, from real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPO, child_env, logged_events


def _run_briefly(testcase, *args: str, env: dict | None = None, argv: list[str] | None = None,
                 listening: str = "listening on") -> str:
    """
    Start memmq (or C{argv}) with its output to a file, wait until it
    listens, SIGTERM it; return what it logged.
    """
    path = os.path.abspath(testcase.mktemp())
    argv = argv or [sys.executable, "-m", "memmq", "--address=127.0.0.1:0"]
    with open(path, "wb") as err:
        environ = dict(child_env(), **(env or {}))
        if env and env.get("JOURNAL_STREAM") == "auto":
            info = os.fstat(err.fileno())
            environ["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
        process = subprocess.Popen([*argv, *args], stderr=err, stdout=err, env=environ, cwd=REPO)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with open(path, encoding="utf-8") as f:
                    if listening in f.read():
                        break
                time.sleep(0.05)
            process.terminate()
            testcase.assertEqual(process.wait(timeout=30), 0)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    with open(path, encoding="utf-8") as f:
        return f.read()


class LogFormatTests(SynchronousTestCase):
    def test_text(self) -> None:
        """
        The default: human-readable lines with a timestamp.
        """
        lines = _run_briefly(self).splitlines()
        listening = [line for line in lines if "memmq listening on https://127.0.0.1:" in line]
        self.assertEqual(len(listening), 1, lines)
        self.assertRegex(listening[0], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")

    def test_json(self) -> None:
        """
        --log_format=json: every line is one JSON object with the time (ISO
        8601, UTC), the level as a string, the namespace and the rendered
        message.
        """
        lines = _run_briefly(self, "--log_format=json").splitlines()
        events = [json.loads(line) for line in lines]
        for event in events:
            self.assertEqual(sorted(event), ["level", "message", "namespace", "time"], event)
        listening = [e for e in events if e["message"].startswith("memmq listening on https://127.0.0.1:")]
        self.assertEqual(len(listening), 1, events)
        self.assertIn("(certificate generated)", listening[0]["message"])
        stopping = [e for e in events if e["message"].startswith("memmq stopping")]
        self.assertEqual(len(stopping), 1, events)
        self.assertEqual((listening[0]["level"], listening[0]["namespace"]), ("info", "memmq.server.service"))
        self.assertRegex(listening[0]["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")

    def test_journald(self) -> None:
        """
        When stderr is the journal stream, lines carry a syslog priority and
        no timestamp (journald adds its own).
        """
        lines = _run_briefly(self, env={"JOURNAL_STREAM": "auto"}).splitlines()
        listening = [line for line in lines if "memmq listening on" in line]
        self.assertEqual(len(listening), 1, lines)
        self.assertTrue(listening[0].startswith("<6>[memmq.server.service] memmq listening on https://"), listening)
        self.assertTrue(all(line.startswith("<") for line in lines), lines)

    def test_twistd_json(self) -> None:
        """
        Under twistd, --logger=memmq.logs.json_observer gives the same JSON
        lines; --log_format itself is refused there with one line.
        """
        twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
        output = _run_briefly(
            self, argv=[*twistd, "--logger=memmq.logs.json_observer", "memmq", "--address=127.0.0.1:0"],
            listening="memmq.server.service",
        )
        events = [json.loads(line) for line in output.splitlines()]
        self.assertEqual(len([e for e in events if e["message"].startswith("memmq listening")]), 1, events)
        refused = subprocess.run(
            [*twistd, "memmq", "--log_format=json"], capture_output=True, env=child_env(), cwd=REPO, timeout=60
        )
        self.assertEqual(refused.returncode, 2)
        self.assertIn(b"memmq: --log_format is for the memmq command", refused.stderr)


class JSONLineTests(SynchronousTestCase):
    def test_failure(self) -> None:
        """
        An event with a failure gets its traceback as C{failure}; the
        message is rendered from the format and the event's fields.
        """
        from twisted.logger import LogLevel
        from twisted.python.failure import Failure

        from memmq.logs import json_line

        try:
            raise ZeroDivisionError("nothing")
        except ZeroDivisionError:
            failure = Failure()
        line = json_line({
            "log_format": "broke {what}", "what": "here", "log_level": LogLevel.error,
            "log_namespace": "memmq.test", "log_time": 0.0, "log_failure": failure,
        })
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertEqual(
            (record["message"], record["level"], record["namespace"], record["time"]),
            ("broke here", "error", "memmq.test", "1970-01-01T00:00:00.000000+00:00"),
        )
        self.assertIn("ZeroDivisionError", record["failure"])


class RateLimitedTests(SynchronousTestCase):
    def test_once_per_interval(self) -> None:
        """
        The first warning is logged at once; the next ones within the
        interval are counted and mentioned by the next line logged.
        """
        from twisted.internet.task import Clock
        from twisted.logger import Logger

        from memmq.logs import RateLimited

        events = []
        logger = Logger(observer=events.append)
        clock = Clock()
        limited = RateLimited(logger, clock, interval=10)
        limited.warn("slow {who}", who="a")
        limited.warn("slow {who}", who="b")
        limited.warn("slow {who}", who="c")
        clock.advance(10)
        limited.warn("slow {who}", who="d")
        self.assertEqual(
            [(e["log_format"], e["who"]) for e in events],
            [("slow {who}", "a"), ("slow {who} (2 more like this since the last such line)", "d")],
        )

    def test_slow_subscriber_logged_once(self) -> None:
        """
        A subscriber whose buffer fills is reported once (not per dropped
        message), and again only after it drained.
        """
        from twisted.internet.task import Clock

        from memmq.broker import Broker
        from memmq.server.drops import drop_reporter

        events = logged_events(self)
        clock = Clock()
        broker = Broker(max_buffered_messages=1, on_drop=drop_reporter(clock))

        class Sink:
            def deliver(self, message):
                pass

        subscription = broker.subscribe("busy", Sink())
        subscription.pause()
        for _ in range(50):
            broker.publish_now("busy", b"x")
        slow = [e for e in events if "not keeping up" in e.get("log_format", "")]
        self.assertEqual(len(slow), 1)
        self.assertEqual(slow[0]["topic"], "busy")
        self.assertEqual(subscription.dropped, 49)
        subscription.resume()
        clock.advance(11)
        broker.publish_now("busy", b"x")
        subscription.pause()
        broker.publish_now("busy", b"x")
        broker.publish_now("busy", b"x")
        self.assertEqual(len([e for e in events if "not keeping up" in e.get("log_format", "")]), 2)
