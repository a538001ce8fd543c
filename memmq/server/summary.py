# -*- test-case-name: tests.test_browser_http -*-
"""
C{GET /api/server}: what the dashboard shows of the server that C{/stats}
and C{/metrics} do not -- version, uptime, mode, upstreams, memory, and
rates over the last minutes (README, "Dashboard").

Rates come from the broker's counters, sampled at most once a second and
only when asked: a server nobody watches samples nothing and runs no timer.
The samples of the last L{HISTORY} seconds are kept (a few kilobytes), so
a page opened while another watches starts with a chart.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from collections import deque

from twisted.internet.interfaces import IReactorTime

from memmq import __version__
from memmq.interfaces import IBrokerStats

__all__ = ["HISTORY", "ServerSummary", "resident_bytes"]

HISTORY = 600.0
_MIN_INTERVAL = 1.0


def resident_bytes() -> int:
    """
    The process's resident memory now (its peak where C{/proc} is missing).
    """
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class ServerSummary:
    """
    The server's summary as JSON, and the history of its rates.
    """

    def __init__(self, broker: IBrokerStats, clock: IReactorTime) -> None:
        self._broker = broker
        self._clock = clock
        self.started = clock.seconds()
        self._samples: deque[tuple[float, int, int, int]] = deque()

    def _sample(self, now: float) -> None:
        delivery = self._broker.stats().delivery
        if delivery is None:
            return
        samples = self._samples
        if samples and now - samples[-1][0] < _MIN_INTERVAL:
            return
        samples.append((now, delivery.published, delivery.delivered, delivery.dropped))
        while samples and now - samples[0][0] > HISTORY:
            samples.popleft()

    def render(self) -> bytes:
        now = self._clock.seconds()
        self._sample(now)
        stats = self._broker.stats()
        mode = "proxy" if stats.upstream is not None else "server"
        body: dict = {
            "version": __version__,
            "time": now,
            "uptime": now - self.started,
            "mode": mode,
            "persist": stats.persistence is not None,
            "pid": os.getpid(),
            "rss": resident_bytes(),
        }
        delivery = stats.delivery
        if delivery is not None:
            body.update(
                published=delivery.published,
                delivered=delivery.delivered,
                dropped=delivery.dropped,
                subscribers=delivery.subscribers,
                topics=delivery.topics,
            )
        if stats.upstream is not None:
            body["upstreams"] = {"servers": list(stats.upstream.servers), "errors": stats.upstream.errors}
        # Per-second rates between consecutive samples: [t, in, out, dropped].
        rates = []
        previous = None
        for sample in self._samples:
            if previous is not None:
                span = sample[0] - previous[0]
                rates.append([
                    round(sample[0], 3),
                    *(round((sample[i] - previous[i]) / span, 1) for i in (1, 2, 3)),
                ])
            previous = sample
        body["rates"] = rates
        return json.dumps(body).encode("utf-8") + b"\n"
