"""
The front-end's read-only resources: C{/health}, C{/metrics}, C{/stats}
and C{/api/server}, each rendering figures it is handed (L{Metrics},
L{ServerSummary}); none of them touches a message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.web import server

from memmq.server.access import Access
from memmq.server.cors import Origins
from memmq.server.metrics import STATS_LIMIT, STATS_SORTS, Metrics
from memmq.server.resources import HTTPError, LeafResource, error
from memmq.server.summary import ServerSummary

if TYPE_CHECKING:
    from memmq.server.web import MemmqSite

__all__ = ["HealthResource", "MetricsResource", "StatsResource", "SummaryResource", "when_gathered"]


class HealthResource(LeafResource):
    """
    C{/health}: 200 while the server serves, 503 once it is shutting down,
    for load balancers and supervisors.
    """

    allowedMethods = (b"GET", b"HEAD")

    def __init__(self, site: MemmqSite) -> None:
        super().__init__()
        self._site = site

    def render_GET(self, request):
        if self._site.stopping:
            return error(request, 503, "shutting down")
        for problem in filter(None, (check() for check in self._site.health_checks)):
            return error(request, *problem)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        if self._site.upstreams is None:
            return b"ok\n"
        # A proxy serves while its upstreams are down (README: Proxy mode):
        # still 200, with each upstream's state in the body.
        gone = []
        request.notifyFinish().addErrback(gone.append)

        def answer(lines: list[str]) -> None:
            if not gone:
                request.write("".join(f"{line}\n" for line in ["ok", *lines]).encode("utf-8"))
                request.finish()

        self._site.upstreams().addCallback(answer)
        return server.NOT_DONE_YET

    render_HEAD = render_GET


class MetricsResource(LeafResource):
    """
    C{/metrics}: the Prometheus text format.
    """

    allowedMethods = (b"GET",)

    def __init__(self, metrics: Metrics, access: Access) -> None:
        super().__init__()
        self._metrics = metrics
        self._access = access

    def render_GET(self, request):
        self._access.check_read_stats(request)
        return when_gathered(self._metrics, request, self._render)

    def _render(self, request) -> bytes:
        body, content_type = self._metrics.exposition()
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return body


class StatsResource(LeafResource):
    """
    C{/stats?offset=N&limit=M&sort=KEY&order=asc|desc&match=TEXT}: totals
    and per-topic figures as JSON.
    """

    allowedMethods = (b"GET",)

    def __init__(self, metrics: Metrics, origins: Origins, access: Access) -> None:
        super().__init__()
        self._metrics = metrics
        self._origins = origins
        self._access = access

    def render_GET(self, request):
        self._access.check_read_stats(request)
        numbers: dict = {}
        for name, default in ((b"offset", 0), (b"limit", STATS_LIMIT)):
            value = request.args.get(name, [b"%d" % default])[0]
            if not (value.isascii() and value.isdigit()):
                raise HTTPError(400, f"{name.decode()} must be a whole number")
            numbers[name.decode()] = int(value)
        sort = request.args.get(b"sort", [b"subscribers"])[0].decode("latin-1")
        if sort not in STATS_SORTS:
            raise HTTPError(400, f"sort must be one of {', '.join(STATS_SORTS)}")
        order = request.args.get(b"order", [b""])[0]
        if order not in (b"", b"asc", b"desc"):
            raise HTTPError(400, "order must be asc or desc")
        try:
            match = request.args.get(b"match", [b""])[0].decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, "match is not valid UTF-8") from None
        descending = order == b"desc" if order else sort != "topic"
        self._origins.answer(request)
        request.setHeader(b"content-type", b"application/json")
        return when_gathered(
            self._metrics,
            request,
            lambda request: self._metrics.stats(**numbers, sort=sort, descending=descending, match=match),
        )


class SummaryResource(LeafResource):
    """
    C{/api/server}: the dashboard's view of the server (L{ServerSummary}).
    """

    allowedMethods = (b"GET",)

    def __init__(self, summary: ServerSummary, origins: Origins) -> None:
        super().__init__()
        self._summary = summary
        self._origins = origins

    def render_GET(self, request):
        self._origins.answer(request)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-cache")
        return self._summary.render()


def when_gathered(metrics: Metrics, request, render):
    """
    C{render(request)} once the figures are gathered: at once, or (a worker
    of a server run with C{--workers}, asking the others) later.
    """
    gathered = metrics.gathered()
    if gathered.called:
        return render(request)

    gone: list = []
    request.notifyFinish().addErrback(gone.append)

    def write(_):
        if not gone:
            request.write(render(request))
            request.finish()

    gathered.addCallback(write)
    return server.NOT_DONE_YET
