# -*- test-case-name: tests.test_mux -*-
"""
The frames of C{memmq.v1}, the multiplexed WebSocket protocol (README,
"One connection, many subscriptions"): many subscriptions and publishes
over one WebSocket, shared by the server (L{memmq.server.mux}) and the
client (L{memmq.client.mux}).

Messages travel in binary frames, their payload as raw bytes after a small
header that names the topic; requests and replies are JSON objects in text
frames.  Pure: no reactor, no I/O.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from memmq.errors import MemmqError

__all__ = [
    "SUBPROTOCOL",
    "ProtocolError",
    "RequestError",
    "decode_message",
    "decode_publish",
    "encode_message",
    "encode_publish",
    "encode_control",
    "decode_control",
    "ok",
    "error",
]

#: The WebSocket subprotocol name a client offers and a server selects.
SUBPROTOCOL = "memmq.v1"

_TOPIC_LENGTH = struct.Struct(">H")
_PUBLISH_HEADER = struct.Struct(">IH")


class ProtocolError(MemmqError, ValueError):
    """
    A frame that does not follow the protocol.
    """


class RequestError(MemmqError):
    """
    A request refused, with the status that says why (the codes of HTTP's
    errors, README "One connection, many subscriptions").
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def encode_message(topic: str, payload: bytes) -> bytes:
    """
    A message, server to client: the topic's length in bytes (2 bytes, big
    endian), the topic (UTF-8), the payload.
    """
    encoded = topic.encode("utf-8")
    return _TOPIC_LENGTH.pack(len(encoded)) + encoded + payload


def decode_message(data: bytes) -> tuple[str, bytes]:
    """
    The topic and payload of a message frame.

    @raise ProtocolError: too short, or a topic that is not UTF-8.
    """
    if len(data) < 2:
        raise ProtocolError("message frame shorter than its 2-byte header")
    (length,) = _TOPIC_LENGTH.unpack_from(data)
    end = 2 + length
    if len(data) < end:
        raise ProtocolError("message frame shorter than its topic length says")
    return _topic(data[2:end]), data[end:]


def encode_publish(ack: int, topic: str, payload: bytes) -> bytes:
    """
    A publish, client to server: the acknowledgement id (4 bytes, big
    endian; 0 for none), the topic's length (2 bytes), the topic, the
    payload.
    """
    encoded = topic.encode("utf-8")
    return _PUBLISH_HEADER.pack(ack, len(encoded)) + encoded + payload


def decode_publish(data: bytes) -> tuple[int, str, bytes]:
    """
    The acknowledgement id, topic and payload of a publish frame.

    @raise ProtocolError: too short, or a topic that is not UTF-8.
    """
    if len(data) < 6:
        raise ProtocolError("publish frame shorter than its 6-byte header")
    ack, length = _PUBLISH_HEADER.unpack_from(data)
    end = 6 + length
    if len(data) < end:
        raise ProtocolError("publish frame shorter than its topic length says")
    return ack, _topic(data[6:end]), data[end:]


def _topic(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("topic is not valid UTF-8") from None


def encode_control(**fields: Any) -> bytes:
    """
    A request or reply: one JSON object (UTF-8), without spaces.
    """
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_control(data: bytes) -> dict[str, Any]:
    """
    The JSON object of a text frame.

    @raise ProtocolError: not JSON, or not an object with a string C{op}.
    """
    try:
        value = json.loads(data)
    except ValueError:
        raise ProtocolError("a text frame must hold one JSON object") from None
    if not isinstance(value, dict):
        raise ProtocolError("a text frame must hold one JSON object")
    if not isinstance(value.get("op"), str):
        raise ProtocolError('a request needs "op", a string')
    return value


def ok(request_id: Any) -> bytes:
    """
    The reply to a request that succeeded.
    """
    return encode_control(op="ok", id=request_id)


def error(request_id: Any, code: int, reason: str) -> bytes:
    """
    The reply to a request that failed: its status and one line saying why.
    """
    return encode_control(op="error", id=request_id, code=code, error=reason)
