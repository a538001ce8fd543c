"""
The details of autobahn that memmq relies on and autobahn does not publish.

    PreparedMessage(payload, isBinary, applyMask, doNotCompress)
                            autobahn.websocket.protocol; its C{payloadHybi}
                            is the whole frame, ready to write: a binary
                            message framed once for every subscriber
    WebSocketServerProtocol.data
                            the bytes received and not yet consumed; during
                            the opening handshake, the request's head
    WebSocketServerProtocol.processHandshake, .succeedHandshake
                            overridden: the first reads C{data}, the second
                            answers with C{_wskey}
    WebSocketServerProtocol._wskey
                            the Sec-WebSocket-Key the accept hash is
                            computed from
    WebSocketProtocol.sendCloseFrame(code, reasonUtf8, isReply)
                            sends a close frame with any code: the public
                            C{sendClose} refuses 1001, which autobahn keeps
                            for itself, and memmq's server going away is
                            exactly what 1001 means
    WebSocketProtocol._fail_connection(code, reason)
                            fails the connection as autobahn does for an
                            oversized message: a close frame, nothing more
                            processed from the peer, and a drop if it does
                            not answer
    WebSocketResource.render(request)
                            takes the request's connection over, leaving
                            C{request.channel.transport} None: how the HTTP
                            channel is known to have handed it over

Each is pinned by C{tests/test_internals.py}.
"""

from __future__ import annotations

import re

from autobahn.websocket.protocol import PreparedMessage

__all__ = ["LenientKeyHandshake", "fail_connection", "send_close_frame", "taken_over", "unmasked_binary_frame"]

# What autobahn wants in Sec-WebSocket-Key: 16 bytes, base64.
WELL_FORMED_KEY = re.compile(rb"[A-Za-z0-9+/]{22}==")
KEY_HEADER = re.compile(rb"(?im)^sec-websocket-key:[ \t]*([^\r\n]*?)[ \t]*\r?$")
STAND_IN_KEY = b"bWVtbXEtc3RhbmQtaW4ta2V5"[:22] + b"=="


def unmasked_binary_frame(payload: bytes) -> bytes:
    """
    The complete unmasked binary WebSocket frame carrying C{payload}, as a
    server sends it; valid only while permessage-deflate is not negotiated.
    """
    return PreparedMessage(payload, True, False, True).payloadHybi


def taken_over(channel) -> bool:
    """
    Whether a WebSocket upgrade (C{WebSocketResource.render}) took
    C{channel}'s connection over.
    """
    return channel.transport is None


def send_close_frame(protocol, code: int, reason: bytes) -> None:
    """
    Start C{protocol}'s closing handshake with C{code} (any code, 1001
    included) and C{reason} (UTF-8, at most 123 bytes).
    """
    protocol.sendCloseFrame(code=code, reasonUtf8=reason, isReply=False)


def fail_connection(protocol, code: int, reason: str) -> None:
    """
    Fail C{protocol}'s connection with C{code} and C{reason}, as autobahn
    fails one whose message is too big.
    """
    protocol._fail_connection(code, reason)


class LenientKeyHandshake:
    """
    A mixin for a C{WebSocketServerProtocol} that takes any non-empty
    Sec-WebSocket-Key, as asim/mq's Go server does (the README's
    subscribe example, in "API", sends C{Sec-Websocket-Key: memmq}), where
    autobahn insists on a 16-byte base64 nonce: autobahn validates a
    well-formed stand-in, and the answer is the hash of the key as the
    client sent it.
    """

    _key_as_sent: bytes | None = None

    def processHandshake(self) -> None:
        data = self.data
        end = data.find(b"\r\n\r\n")
        if end >= 0 and self._key_as_sent is None:
            match = KEY_HEADER.search(data, 0, end + 2)
            if match and match.group(1) and not WELL_FORMED_KEY.fullmatch(match.group(1)):
                self._key_as_sent = match.group(1)
                self.data = data[: match.start(1)] + STAND_IN_KEY + data[match.end(1):]
        super().processHandshake()

    def succeedHandshake(self, res) -> None:
        if self._key_as_sent is not None:
            self._wskey = self._key_as_sent.decode("latin-1")
        super().succeedHandshake(res)
