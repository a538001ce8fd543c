"""
One persisted message as one line of a topic's file, in asim/mq's format.

asim/mq writes C{json.Marshal} of its message struct and a newline:

    {"timestamp":<unix ns>,"topic":"<topic>","payload":"<standard base64>"}

Keys in that order, no spaces, the topic escaped as Go's encoding/json
escapes strings (C{<}, C{>}, C{&}, U+2028 and U+2029 as C{\\uXXXX}, on top
of JSON's own escapes).  memmq writes the same bytes, so a file written by
either program reads the same to both; tests/fixtures/asim-mq holds lines
made by Go's encoder to hold us to it.
"""

from __future__ import annotations

import binascii
import json

__all__ = ["Record", "encode_topic", "line", "parse"]

# Go's encoding/json escapes these on top of what JSON requires (HTML
# safety and JavaScript line terminators); Python's json does not.
_GO_EXTRA = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_EXTRA_TABLE = str.maketrans(_GO_EXTRA)


def encode_topic(topic: str) -> bytes:
    """
    The line's bytes after the timestamp up to the payload's opening quote:
    computed once per topic, since every line of a file shares it.
    """
    quoted = json.dumps(topic, ensure_ascii=False).translate(_GO_EXTRA_TABLE)
    return b',"topic":' + quoted.encode("utf-8") + b',"payload":"'


def line(timestamp: int, topic_part: bytes, payload: bytes) -> bytes:
    """
    The complete line for one message; C{topic_part} is L{encode_topic}'s.
    """
    return b'{"timestamp":%d%s%s"}\n' % (timestamp, topic_part, binascii.b2a_base64(payload, newline=False))


class Record:
    """
    A line read back: its timestamp, topic and payload.
    """

    __slots__ = ("timestamp", "topic", "payload")

    def __init__(self, timestamp: int, topic: str, payload: bytes) -> None:
        self.timestamp = timestamp
        self.topic = topic
        self.payload = payload

    def __repr__(self) -> str:
        return f"<Record {self.timestamp} {self.topic!r} {len(self.payload)} bytes>"


def parse(text: bytes) -> Record:
    """
    Read one line (with or without its newline), as written by memmq or
    asim/mq.

    @raise ValueError: the line is not such a record (a torn last line
        after a crash, or a foreign file).
    """
    try:
        obj = json.loads(text)
        timestamp, topic, payload = obj["timestamp"], obj["topic"], obj["payload"]
        if not isinstance(timestamp, int) or not isinstance(topic, str):
            raise ValueError("bad field types")
        # Go marshals a nil []byte as null.
        data = b"" if payload is None else binascii.a2b_base64(payload, strict_mode=True)
    except (KeyError, TypeError, binascii.Error, json.JSONDecodeError) as e:
        raise ValueError(f"not a persisted message: {e}") from None
    return Record(timestamp, topic, data)
