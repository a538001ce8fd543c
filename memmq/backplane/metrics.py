"""
A backplane's figures in C{/metrics}, beside the broker's (README: Redis
backplane): whether its link is up, how often it was lost, and what went
out, was not sent (no other node followed the topic) and came in.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["BackplaneCollector"]


class BackplaneCollector:
    """
    A prometheus_client collector over a L{memmq.backplane.redis.RedisBackplane}
    (anything with its C{state}, C{losses}, C{sent}, C{skipped},
    C{received}, C{echoes} and C{remote.nodes}).
    """

    def __init__(self, backplane) -> None:
        self._backplane = backplane

    def collect(self):
        backplane = self._backplane
        up = GaugeMetricFamily("memmq_backplane_up", "1 while the link to the other nodes is up, else 0.")
        up.add_metric([], 1 if backplane.state == "up" else 0)
        yield up
        nodes = GaugeMetricFamily("memmq_backplane_nodes", "Other nodes heard from on the backplane.")
        nodes.add_metric([], backplane.remote.nodes)
        yield nodes
        for name, text, value in (
            ("memmq_backplane_losses", "Times the link to the other nodes was lost.", backplane.losses),
            ("memmq_backplane_sent", "Messages handed to the backplane for other nodes.", backplane.sent),
            ("memmq_backplane_skipped", "Publishes no other node followed: not sent.", backplane.skipped),
            ("memmq_backplane_received", "Messages received from other nodes.", backplane.received),
        ):
            counter = CounterMetricFamily(name, text)
            counter.add_metric([], value)
            yield counter
