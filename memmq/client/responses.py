"""
Reading the answers of pipelined HTTP/1.1 publishes: the byte stream of one
connection split into responses (status, body, whether the server closes
afterwards), handed in order to the connection that sent the requests
(L{memmq.client.publisher.PublishConnection}).

Written here rather than taken from twisted.web's client because the
answers to a publish are small and many, and a pipelined connection needs
them matched to its requests in order (see L{memmq.client.publisher}).
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from memmq.eager import make_eager
from memmq.errors import MemmqError

__all__ = ["BadResponse", "Response", "ResponseReader", "parse_head", "status_reason", "MAX_HEAD"]

MAX_HEAD = 64 * 1024  # a response head larger than this is not a memmq server's


class BadResponse(MemmqError):
    """
    The server's answer is not HTTP/1.1 as a memmq server speaks it.
    """


class Response:
    """
    One HTTP response being read: its status, whether the server closes
    afterwards, and how much body is still to come.
    """

    __slots__ = ("code", "close", "remaining", "chunked", "until_close", "body")

    def __init__(self, code: int, close: bool, remaining: int, chunked: bool, until_close: bool) -> None:
        self.code = code
        self.close = close
        self.remaining = remaining
        self.chunked = chunked
        self.until_close = until_close
        self.body = bytearray()


def parse_head(head: bytes) -> Response:
    """
    The status line and headers of a response (without the blank line).
    """
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
        raise BadResponse(f"not an HTTP/1.1 answer: {lines[0][:80]!r}")
    code = int(status[1])
    close = status[0] == b"HTTP/1.0"
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip()
        if name == b"content-length":
            if not value.isdigit():
                raise BadResponse(f"bad Content-Length {value[:40]!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
        elif name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"close" in tokens:
                close = True
            elif b"keep-alive" in tokens:
                close = False
    if code in (204, 304) or 100 <= code < 200:
        return Response(code, close, 0, False, False)
    if chunked:
        return Response(code, close, 0, True, False)
    if length is not None:
        return Response(code, close, length, False, False)
    return Response(code, True, 0, False, True)


class ResponseReader(Protocol):
    """
    The reading side of one publish connection: splits the byte stream into
    responses and hands each to the connection, in order.
    """

    def __init__(self, connection) -> None:
        self._connection = connection
        self._buffer = bytearray()
        self._response: Response | None = None
        self._chunk_left = -1  # chunked: bytes left in the chunk, -1 when a size line is due

    def connectionMade(self) -> None:
        tcp = self.transport
        tcp = getattr(tcp, "transport", tcp)  # under TLS, the TCP connection below it
        make_eager(tcp)
        self._connection.reader_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        try:
            while self._buffer and self._parse_one():
                pass
        except BadResponse as e:
            self._connection.bad_response(self, str(e))

    def _parse_one(self) -> bool:
        """
        Make what progress the buffer allows; C{True} if more may be made.
        """
        buffer = self._buffer
        response = self._response
        if response is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise BadResponse("response head too large")
                return False
            response = parse_head(bytes(buffer[:end]))
            del buffer[: end + 4]
            if 100 <= response.code < 200:
                return True  # an interim answer: the real one follows
            self._response = response
            self._chunk_left = -1
        if response.until_close:
            response.body += buffer
            del buffer[:]
            return False
        if response.chunked:
            return self._parse_chunk(response)
        take = min(response.remaining, len(buffer))
        if take:
            response.body += buffer[:take]
            del buffer[:take]
            response.remaining -= take
        if response.remaining:
            return False
        self._finish(response)
        return True

    def _parse_chunk(self, response: Response) -> bool:
        buffer = self._buffer
        if self._chunk_left == -1:
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise BadResponse("chunk size line too long")
                return False
            size = bytes(buffer[:end]).split(b";", 1)[0].strip()
            try:
                self._chunk_left = int(size, 16)
            except ValueError:
                raise BadResponse(f"bad chunk size {size[:20]!r}") from None
            del buffer[: end + 2]
            if self._chunk_left == 0:
                self._chunk_left = -2  # the trailer is due
            return True
        if self._chunk_left == -2:
            end = buffer.find(b"\r\n\r\n") if not buffer.startswith(b"\r\n") else -2
            if end == -2:
                del buffer[:2]
            elif end < 0:
                return False
            else:
                del buffer[: end + 4]
            self._finish(response)
            return True
        take = min(self._chunk_left, len(buffer))
        response.body += buffer[:take]
        del buffer[:take]
        self._chunk_left -= take
        if self._chunk_left:
            return False
        if len(buffer) < 2:
            self._chunk_left = 0
            return False
        if buffer[:2] != b"\r\n":
            raise BadResponse("chunk longer than its size")
        del buffer[:2]  # the CRLF after the chunk
        self._chunk_left = -1
        return True

    def _finish(self, response: Response) -> None:
        self._response = None
        self._connection.answered(self, response.code, bytes(response.body), response.close)

    def connectionLost(self, reason: Failure) -> None:
        response = self._response
        if response is not None and response.until_close:
            self._response = None
            self._connection.answered(self, response.code, bytes(response.body), True)
        self._connection.reader_lost(self, reason)


def status_reason(code: int, body: bytes) -> str:
    """
    A refused publish's one-line reason: its status and the first line of
    the body the server sent with it.
    """
    line = body.decode("utf-8", "replace").strip().splitlines()
    return f"HTTP {code}" + (f": {line[0]}" if line else "")
